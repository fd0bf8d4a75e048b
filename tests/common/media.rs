//! Real media for real players: HLS and DASH made by ffmpeg, served by a small HTTP/1.1
//! file origin (keep-alive, `Range`, `HEAD`, a live HLS window that advances every second,
//! gzip on request), which logs every request line and measures how many requests of one
//! stream (by the `Stream-Id` the proxy sends upstream) it serves at once.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Segments of the live source (1 s each); the live window shows `LIVE_WINDOW` of them.
pub const LIVE_SEGMENTS: usize = 40;
const LIVE_WINDOW: usize = 4;

fn ffmpeg(args: &[&str]) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny test picture and tone, `secs` long, 160x90, keyframe every second.
fn source(secs: u32) -> Vec<String> {
    [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x90:rate=10",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=22050",
        "-t",
        &secs.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "10",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "32k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The media tree, made once per test process:
/// - `vod/index.m3u8` (HLS VOD, 4 s in 1 s TS segments), `vod2/` (the same at 120x68),
/// - `master.m3u8` (two variants: `vod/` and `vod2/`),
/// - `fmp4/index.m3u8` (HLS fMP4 in one file, `EXT-X-BYTERANGE`),
/// - `dash/manifest.mpd` (SegmentTemplate with a timeline, video and audio apart),
/// - `live/seg%03d.ts` (`LIVE_SEGMENTS` 1 s segments for the live window).
pub fn media_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("streamgate-media-{}", std::process::id()));
        for sub in ["vod", "vod2", "fmp4", "dash", "live"] {
            std::fs::create_dir_all(dir.join(sub)).expect("media dir");
        }
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let run = |secs, extra: &[&str]| {
            let mut args = source(secs);
            args.extend(extra.iter().map(|s| s.to_string()));
            ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
        };
        let hls = |out: &str, seg: &str| {
            vec![
                "-f".to_string(),
                "hls".into(),
                "-hls_time".into(),
                "1".into(),
                "-hls_playlist_type".into(),
                "vod".into(),
                "-hls_segment_filename".into(),
                d(seg),
                d(out),
            ]
        };
        let a = hls("vod/index.m3u8", "vod/seg%03d.ts");
        run(4, &a.iter().map(String::as_str).collect::<Vec<_>>());
        let mut b = vec!["-s".to_string(), "120x68".into()];
        b.extend(hls("vod2/index.m3u8", "vod2/seg%03d.ts"));
        run(4, &b.iter().map(String::as_str).collect::<Vec<_>>());
        let fmp4 = [
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_type",
            "fmp4",
            "-hls_flags",
            "single_file",
        ];
        let mut c: Vec<String> = fmp4.iter().map(|s| s.to_string()).collect();
        c.push(d("fmp4/index.m3u8"));
        run(4, &c.iter().map(String::as_str).collect::<Vec<_>>());
        let dash = d("dash/manifest.mpd");
        run(
            4,
            &[
                "-f",
                "dash",
                "-seg_duration",
                "1",
                "-use_template",
                "1",
                "-use_timeline",
                "1",
                &dash,
            ],
        );
        let live_seg = d("live/seg%03d.ts");
        run(
            LIVE_SEGMENTS as u32,
            &[
                "-f",
                "segment",
                "-segment_time",
                "1",
                "-segment_format",
                "mpegts",
                "-reset_timestamps",
                "0",
                &live_seg,
            ],
        );
        let mut master = std::fs::File::create(dir.join("master.m3u8")).expect("master");
        write!(
            master,
            "#EXTM3U\n#EXT-X-VERSION:3\n\
             #EXT-X-STREAM-INF:BANDWIDTH=150000,RESOLUTION=160x90,CODECS=\"avc1.42c00a,mp4a.40.2\"\n\
             vod/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=100000,RESOLUTION=120x68,CODECS=\"avc1.42c00a,mp4a.40.2\"\n\
             vod2/index.m3u8\n"
        )
        .expect("master written");
        dir
    })
}

/// One request as the media origin saw it.
#[derive(Debug, Clone)]
pub struct MediaSeen {
    /// The request target as sent: path and query.
    pub target: String,
    pub stream: Option<String>,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<MediaSeen>,
    live_per_stream: HashMap<String, usize>,
    max_per_stream: usize,
}

/// The file origin. Paths are served from [`media_dir`] with `/watch/` taken off.
pub struct MediaOrigin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MediaOrigin {
    pub async fn start() -> MediaOrigin {
        let dir = media_dir().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let epoch = Instant::now();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, dir) = (st.clone(), dir.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, st, dir, epoch).await;
                });
            }
        });
        MediaOrigin { addr, state, task }
    }

    pub fn seen(&self) -> Vec<MediaSeen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The most requests of one stream the origin served at the same moment.
    pub fn max_inflight_per_stream(&self) -> usize {
        self.state.lock().unwrap().max_per_stream
    }
}

impl Drop for MediaOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "ts" => "video/mp2t",
        "m4s" | "mp4" => "video/mp4",
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript",
        _ => "application/octet-stream",
    }
}

/// The live window at `secs` since the origin started: `LIVE_WINDOW` segments, sliding one
/// a second, ended (`EXT-X-ENDLIST`) once the source runs out.
fn live_playlist(secs: u64) -> String {
    let last = (secs as usize + LIVE_WINDOW - 1).min(LIVE_SEGMENTS - 1);
    let first = last + 1 - LIVE_WINDOW;
    let mut p = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for n in first..=last {
        p.push_str(&format!("#EXTINF:1.000000,\nseg{n:03}.ts\n"));
    }
    if last == LIVE_SEGMENTS - 1 {
        p.push_str("#EXT-X-ENDLIST\n");
    }
    p
}

struct InFlight(Arc<Mutex<State>>, Option<String>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = &self.1 {
            let mut st = self.0.lock().unwrap();
            if let Some(n) = st.live_per_stream.get_mut(s) {
                *n -= 1;
            }
        }
    }
}

async fn serve(
    sock: TcpStream,
    st: Arc<Mutex<State>>,
    dir: PathBuf,
    epoch: Instant,
) -> std::io::Result<()> {
    let mut r = BufReader::new(sock);
    loop {
        let Some((method, target, headers)) = super::read_head(&mut r).await? else {
            return Ok(());
        };
        let stream = headers.get("stream-id").cloned();
        let _inflight = {
            let mut s = st.lock().unwrap();
            s.seen.push(MediaSeen {
                target: target.clone(),
                stream: stream.clone(),
                range: headers.get("range").cloned(),
            });
            if let Some(id) = &stream {
                let n = s.live_per_stream.entry(id.clone()).or_default();
                *n += 1;
                let n = *n;
                s.max_per_stream = s.max_per_stream.max(n);
            }
            InFlight(st.clone(), stream)
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        let rel = path.trim_start_matches("/watch/").trim_start_matches('/');
        let gzip = rel.starts_with("gz/");
        let rel = rel.trim_start_matches("gz/");
        let body: Option<Vec<u8>> = if rel == "live/index.m3u8" {
            Some(live_playlist(epoch.elapsed().as_secs()).into_bytes())
        } else if rel.contains("..") {
            None
        } else if let Some(app) = rel.strip_prefix("app/") {
            // The browser players' pages and libraries (tests/browser, npm ci).
            let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
            tokio::fs::read(browser.join(app)).await.ok()
        } else {
            tokio::fs::read(dir.join(rel)).await.ok()
        };
        let sock = r.get_mut();
        let Some(mut body) = body else {
            sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await?;
            continue;
        };
        let mut head = format!("Content-Type: {}\r\nETag: \"v1\"\r\n", content_type(&path));
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&body)?;
            body = enc.finish()?;
            head.push_str("Content-Encoding: gzip\r\nCache-Control: public, max-age=2\r\n");
        }
        let mut status = "200 OK";
        if let Some((a, b)) = headers
            .get("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
        {
            let total = body.len();
            let start: usize = a.parse().unwrap_or(0).min(total);
            let end: usize = b.parse().unwrap_or(total.saturating_sub(1)).min(total - 1);
            head.push_str(&format!("Content-Range: bytes {start}-{end}/{total}\r\n"));
            body = body[start..=end.max(start)].to_vec();
            status = "206 Partial Content";
        }
        head.push_str("Accept-Ranges: bytes\r\n");
        let resp = format!(
            "HTTP/1.1 {status}\r\n{head}Content-Length: {}\r\n\r\n",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        if method != "HEAD" {
            sock.write_all(&body).await?;
        }
        sock.flush().await?;
    }
}

/// ffmpeg as the player: plays `url` to its end with the identity header on every request.
pub fn player(url: &str, user: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-headers", &format!("Session-Id: {user}\r\n")])
        .args(["-i", url, "-map", "0", "-c", "copy", "-f", "null", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Play to the end, bounded in time; the exit status and what ffmpeg printed.
pub async fn play(url: &str, user: &str, within: Duration) -> (bool, String) {
    let child = player(url, user).spawn().expect("ffmpeg starts");
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("the player finished in time")
        .expect("ffmpeg ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
