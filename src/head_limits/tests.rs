use super::head_end::HeadEnd;

fn ends(chunks: &[&[u8]]) -> Option<(usize, usize)> {
    let mut e = HeadEnd::default();
    for (i, c) in chunks.iter().enumerate() {
        if let Some(at) = e.feed(c) {
            return Some((i, at));
        }
    }
    None
}

#[test]
fn a_head_ends_at_its_first_empty_line_in_any_spelling() {
    assert_eq!(
        ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]),
        Some((0, 27))
    );
    assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some((0, 24)));
    assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r"]), None);
    assert_eq!(
        ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"]),
        Some((2, 1))
    );
    assert_eq!(
        ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\n"]),
        Some((1, 3))
    );
    assert_eq!(
        ends(&[b"GET / HTTP/1.1\r\nX: a", b"b\r\n", b"\r\n"]),
        Some((2, 2))
    );
}

#[test]
fn empty_lines_before_the_request_line_do_not_end_it() {
    assert_eq!(ends(&[b"\r\n\r\n\n"]), None);
    assert_eq!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]), Some((0, 22)));
    assert_eq!(
        ends(&[b"\r\n", b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]),
        Some((2, 18))
    );
}

#[test]
fn a_lone_carriage_return_is_not_an_empty_line() {
    assert_eq!(ends(&[b"GET / HTTP/1.1\r\nX: \r\r\n"]), None);
    assert_eq!(ends(&[b"GET / HTTP/1.1\r\n\r\r\n"]), None);
}
