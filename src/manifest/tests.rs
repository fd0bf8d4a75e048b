//! The rewriters on real-world manifest shapes.

use super::*;

const ID: &str = "0b5d3c5e-1f0e-4c1e-9a57-3f1a8f0c2b11";

fn tagger() -> Tagger {
    Tagger::new(
        "sg_stream",
        &["cdn.example.com".into(), "edge.example:8443".into()],
    )
}

fn hls(input: &str) -> String {
    String::from_utf8(tagger().rewrite(Kind::Hls, input.as_bytes(), ID).unwrap()).unwrap()
}

fn dash(input: &str) -> String {
    String::from_utf8(tagger().rewrite(Kind::Dash, input.as_bytes(), ID).unwrap()).unwrap()
}

#[test]
fn kinds_come_from_the_media_type_or_a_generic_types_path() {
    let k = |ct: Option<&str>, p| Kind::of(ct.map(str::as_bytes), p);
    assert_eq!(
        k(Some("application/vnd.apple.mpegurl"), "/a"),
        Some(Kind::Hls)
    );
    assert_eq!(
        k(Some("Application/X-MpegURL; charset=utf-8"), "/a"),
        Some(Kind::Hls)
    );
    assert_eq!(k(Some("audio/mpegurl"), "/a"), Some(Kind::Hls));
    assert_eq!(k(Some("application/dash+xml"), "/a"), Some(Kind::Dash));
    assert_eq!(k(None, "/v/index.M3U8"), Some(Kind::Hls));
    assert_eq!(
        k(Some("application/octet-stream"), "/v/a.mpd"),
        Some(Kind::Dash)
    );
    assert_eq!(k(Some("text/plain"), "/v/a.m3u8"), Some(Kind::Hls));
    // A specific type wins over the path: a segment named .m3u8 by mistake is not parsed.
    assert_eq!(k(Some("video/mp2t"), "/v/a.m3u8"), None);
    assert_eq!(k(Some("video/mp4"), "/v/seg.m4s"), None);
    assert_eq!(k(None, "/v/seg.ts"), None);
}

#[test]
fn tags_relative_and_listed_hosts_only() {
    let t = tagger();
    let p = |u| t.tag(u, ID);
    assert_eq!(p("seg1.ts").unwrap(), format!("seg1.ts?sg_stream={ID}"));
    assert_eq!(
        p("seg1.ts?x=1").unwrap(),
        format!("seg1.ts?x=1&sg_stream={ID}")
    );
    assert_eq!(
        p("seg1.ts#t=3").unwrap(),
        format!("seg1.ts?sg_stream={ID}#t=3")
    );
    assert_eq!(p("a?x=1#f").unwrap(), format!("a?x=1&sg_stream={ID}#f"));
    assert_eq!(
        p("/abs/path.ts").unwrap(),
        format!("/abs/path.ts?sg_stream={ID}")
    );
    // A stale id is replaced, not doubled; other pairs are kept byte for byte.
    assert_eq!(
        p("a.ts?sg_stream=old&b=%2F&c").unwrap(),
        format!("a.ts?b=%2F&c&sg_stream={ID}")
    );
    assert!(p("https://cdn.example.com/v/a.ts").is_some());
    assert!(
        p("HTTP://CDN.example.com:80/v/a.ts").is_some(),
        "host without port: any port"
    );
    assert!(p("https://edge.example:8443/a.ts").is_some());
    assert!(
        p("https://edge.example/a.ts").is_none(),
        "host:port entries need that port"
    );
    assert!(p("//cdn.example.com/a.ts").is_some(), "scheme-relative");
    assert!(p("https://other.example/a.ts").is_none());
    assert!(p("https://user@evil.example/a.ts").is_none());
    assert!(p("https://cdn.example.com.evil/a.ts").is_none());
    assert!(
        p("skd://key-id").is_none(),
        "FairPlay key URIs are not ours"
    );
    assert!(p("data:text/plain;base64,AAAA").is_none());
    assert!(p("").is_none());
}

#[test]
fn strip_param_keeps_the_rest_of_the_query_as_it_was() {
    assert_eq!(
        strip_param("a=1&sg_stream=x&b=%20", "sg_stream"),
        "a=1&b=%20"
    );
    assert_eq!(strip_param("sg_stream=x", "sg_stream"), "");
    assert_eq!(strip_param("sg_stream", "sg_stream"), "");
    assert_eq!(strip_param("sg_streamx=1&a", "sg_stream"), "sg_streamx=1&a");
    assert_eq!(strip_param("a&&b", "sg_stream"), "a&&b");
}

#[test]
fn hls_media_playlist_with_byteranges_and_a_map() {
    let input = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"720@0\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"https://cdn.example.com/key?k=1\",IV=0x1234\n\
#EXTINF:4.0,title with URI=\"x\"\n#EXT-X-BYTERANGE:1000@720\nmain.mp4\n\
#EXTINF:4.0,\n#EXT-X-BYTERANGE:1000\nmain.mp4\n# a comment: seg.ts\n\n#EXT-X-ENDLIST\n";
    let want = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-MAP:URI=\"init.mp4?sg_stream={ID}\",BYTERANGE=\"720@0\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"https://cdn.example.com/key?k=1&sg_stream={ID}\",IV=0x1234\n\
#EXTINF:4.0,title with URI=\"x\"\n#EXT-X-BYTERANGE:1000@720\nmain.mp4?sg_stream={ID}\n\
#EXTINF:4.0,\n#EXT-X-BYTERANGE:1000\nmain.mp4?sg_stream={ID}\n# a comment: seg.ts\n\n#EXT-X-ENDLIST\n"
    );
    assert_eq!(hls(input), want);
}

#[test]
fn hls_master_playlist_media_and_iframe_streams() {
    let input = "#EXTM3U\r\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"English, main\",DEFAULT=YES,URI=\"audio/en.m3u8\"\r\n\
#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI=\"skd://abc\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\r\n\
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",AUDIO=\"aac\"\r\n\
low/index.m3u8\r\n\
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI=\"low/iframe.m3u8\"\r\n\
https://other.example/high/index.m3u8";
    let want = format!(
        "#EXTM3U\r\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"English, main\",DEFAULT=YES,URI=\"audio/en.m3u8?sg_stream={ID}\"\r\n\
#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI=\"skd://abc\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\r\n\
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",AUDIO=\"aac\"\r\n\
low/index.m3u8?sg_stream={ID}\r\n\
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI=\"low/iframe.m3u8?sg_stream={ID}\"\r\n\
https://other.example/high/index.m3u8"
    );
    assert_eq!(
        hls(input),
        want,
        "CRLF kept, no ending added to the last line"
    );
}

#[test]
fn hls_low_latency_tags_as_in_apples_example() {
    // The shape of Apple's LL-HLS example playlist (draft-pantos-hls-rfc8216bis, §B).
    let input = "\u{feff}#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-VERSION:6\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0,CAN-SKIP-UNTIL=12.0\n\
#EXT-X-PART-INF:PART-TARGET=0.33334\n#EXT-X-MEDIA-SEQUENCE:266\n\
#EXT-X-PROGRAM-DATE-TIME:2019-02-14T02:13:36.106Z\n#EXT-X-MAP:URI=\"init.mp4\"\n\
#EXTINF:4.00008,\nfileSequence266.mp4\n\
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.0.mp4\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.1.mp4\"\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"filePart273.4.mp4\"\n\
#EXT-X-RENDITION-REPORT:URI=\"../1M/waitForMSN.php\",LAST-MSN=273,LAST-PART=3\n";
    let out = hls(input);
    assert!(out.starts_with("\u{feff}#EXTM3U\n"), "BOM kept");
    for uri in [
        "init.mp4",
        "fileSequence266.mp4",
        "filePart271.0.mp4",
        "filePart271.1.mp4",
        "filePart273.4.mp4",
        "../1M/waitForMSN.php",
    ] {
        assert!(
            out.contains(&format!("{uri}?sg_stream={ID}")),
            "{uri} in {out}"
        );
    }
    assert!(out.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0"));
    // Only URIs changed: removing the parameter gives the input back.
    assert_eq!(out.replace(&format!("?sg_stream={ID}"), ""), input);
}

#[test]
fn hls_rewrite_is_idempotent_and_refuses_what_is_not_a_playlist() {
    let once = hls("#EXTM3U\n#EXTINF:2,\na.ts?x=1\n");
    assert_eq!(
        once,
        hls(&once),
        "a second rewrite replaces the id, adds nothing"
    );
    assert!(tagger()
        .rewrite(Kind::Hls, b"<html>404</html>", ID)
        .is_err());
    assert!(tagger().rewrite(Kind::Hls, b"#EXTM3U\n\xff\n", ID).is_err());
}

#[test]
fn dash_segment_template_and_timeline() {
    let input = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT4S">
  <!-- made by ffmpeg -->
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video">
      <SegmentTemplate timescale="90000" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s?a=1&amp;b=2" startNumber="1">
        <SegmentTimeline>
          <S t="0" d="180000" r="1"/>
        </SegmentTimeline>
      </SegmentTemplate>
      <Representation id="0" bandwidth="100000" width="160" height="90"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;
    let out = dash(input);
    assert!(out.contains(&format!(
        r#"initialization="init-stream$RepresentationID$.m4s?sg_stream={ID}""#
    )));
    assert!(out.contains(&format!(
        r#"media="chunk-stream$RepresentationID$-$Number%05d$.m4s?a=1&amp;b=2&amp;sg_stream={ID}""#
    )));
    assert!(out.contains(r#"<S t="0" d="180000" r="1"/>"#));
    assert!(out.contains("<!-- made by ffmpeg -->"));
    assert!(out.starts_with(r#"<?xml version="1.0" encoding="utf-8"?>"#));
    // Everything but the two attributes is as it was.
    let back = out
        .replace(&format!("?sg_stream={ID}"), "")
        .replace(&format!("&amp;sg_stream={ID}"), "");
    assert_eq!(back, input);
}

#[test]
fn dash_base_url_per_period_segment_list_and_location() {
    let input = r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic">
<Location>https://cdn.example.com/live/manifest.mpd</Location>
<Period id="p1"><BaseURL>https://other.example/p1/</BaseURL>
<AdaptationSet><Representation id="v"><BaseURL>video.mp4</BaseURL>
<SegmentBase indexRange="0-100"><Initialization sourceURL="init.mp4"/></SegmentBase>
</Representation></AdaptationSet></Period>
<Period id="p2"><BaseURL>p2/</BaseURL><AdaptationSet><Representation id="a">
<SegmentList><Initialization sourceURL="a/init.mp4"/><SegmentURL media="a/1.m4s" mediaRange="0-99"/><SegmentURL media="https://other.example/a/2.m4s"/></SegmentList>
</Representation></AdaptationSet></Period></MPD>"#;
    let out = dash(input);
    assert!(out.contains(&format!(
        "<Location>https://cdn.example.com/live/manifest.mpd?sg_stream={ID}</Location>"
    )));
    assert!(out.contains("<BaseURL>https://other.example/p1/</BaseURL>"));
    assert!(
        out.contains("<BaseURL>p2/</BaseURL>"),
        "a directory base is left alone"
    );
    assert!(out.contains(&format!("<BaseURL>video.mp4?sg_stream={ID}</BaseURL>")));
    assert!(out.contains(&format!(
        r#"<Initialization sourceURL="init.mp4?sg_stream={ID}"/>"#
    )));
    assert!(out.contains(&format!(
        r#"<SegmentURL media="a/1.m4s?sg_stream={ID}" mediaRange="0-99"/>"#
    )));
    assert!(out.contains(r#"<SegmentURL media="https://other.example/a/2.m4s"/>"#));
}

#[test]
fn dash_text_with_entities_is_escaped_again() {
    let out = dash("<MPD><BaseURL>v.mp4?a=1&amp;b=2</BaseURL></MPD>");
    assert_eq!(
        out,
        format!("<MPD><BaseURL>v.mp4?a=1&amp;b=2&amp;sg_stream={ID}</BaseURL></MPD>")
    );
}

#[test]
fn dash_refuses_what_is_not_an_mpd() {
    assert!(tagger().rewrite(Kind::Dash, b"#EXTM3U\n", ID).is_err());
    assert!(tagger()
        .rewrite(Kind::Dash, b"<html><body/></html>", ID)
        .is_err());
    assert!(tagger()
        .rewrite(Kind::Dash, b"<MPD><Period></MPD>", ID)
        .is_err());
}

#[test]
fn compressed_manifests_are_rewritten_and_encoded_again() {
    let plain = b"#EXTM3U\n#EXTINF:2,\na.ts\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain).unwrap();
    let gz = gz.finish().unwrap();
    let out = tagger()
        .rewrite_encoded(Kind::Hls, Encoding::Gzip, &gz, ID, 1 << 20)
        .unwrap();
    let mut back = String::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, format!("#EXTM3U\n#EXTINF:2,\na.ts?sg_stream={ID}\n"));

    let mut br = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    br.write_all(plain).unwrap();
    let br = br.into_inner();
    let out = tagger()
        .rewrite_encoded(Kind::Hls, Encoding::Brotli, &br, ID, 1 << 20)
        .unwrap();
    let mut back = String::new();
    brotli::Decompressor::new(&out[..], 4096)
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, format!("#EXTM3U\n#EXTINF:2,\na.ts?sg_stream={ID}\n"));

    // A bomb that decodes past the limit is refused.
    assert!(matches!(
        tagger().rewrite_encoded(Kind::Hls, Encoding::Gzip, &gz, ID, 8),
        Err(RewriteError::TooLarge)
    ));
    assert_eq!(Encoding::of(Some(b"gzip")), Some(Encoding::Gzip));
    assert_eq!(Encoding::of(None), Some(Encoding::Identity));
    assert_eq!(Encoding::of(Some(b"compress")), None);
}
