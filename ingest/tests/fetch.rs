//! The image fetcher against a local HTTP server: success, HTTP errors, timeouts, content
//! types, byte limits, redirects, retries, and the address guard.

mod common;

use common::TestServer;
use unimod_ingest::config::FetchConfig;
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::reject::RejectReason;
use url::Url;

fn config(allow_private_networks: bool) -> FetchConfig {
    FetchConfig {
        allow_private_networks,
        max_image_bytes: 100_000,
        timeout_seconds: 0.5,
        connect_timeout_seconds: 0.5,
        max_redirects: 3,
        retries: 0,
        retry_backoff_ms: 10,
        ..FetchConfig::default()
    }
}

fn fetcher(config: &FetchConfig) -> ImageFetcher {
    ImageFetcher::new(config, None).expect("client builds")
}

async fn reason(fetcher: &ImageFetcher, url: &str) -> RejectReason {
    let url = Url::parse(url).expect("url");
    fetcher.fetch(&url).await.expect_err("must fail").reason
}

#[tokio::test]
async fn downloads_images() {
    let server = TestServer::start().await;
    let f = fetcher(&config(true));
    let bytes = f.fetch(&Url::parse(&server.url("/ok.png")).expect("url")).await.expect("ok");
    assert_eq!(bytes, common::png(64, 48, [200, 100, 50]));
    let jpeg = f.fetch(&Url::parse(&server.url("/ok.jpg")).expect("url")).await.expect("ok");
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    f.fetch(&Url::parse(&server.url("/octet.png")).expect("url")).await.expect("octet-stream is accepted");
    // One redirect is followed.
    let redirected = f.fetch(&Url::parse(&server.url("/to-ok")).expect("url")).await.expect("ok");
    assert_eq!(redirected, bytes);
}

#[tokio::test]
async fn http_failures_are_rejected_with_their_reason() {
    let server = TestServer::start().await;
    let f = fetcher(&config(true));
    assert_eq!(reason(&f, &server.url("/missing.png")).await, RejectReason::HttpStatus);
    assert_eq!(reason(&f, &server.url("/page.html")).await, RejectReason::BadContentType);
    assert_eq!(reason(&f, &server.url("/slow.png")).await, RejectReason::FetchTimeout);
    assert_eq!(reason(&f, &server.url("/huge.png")).await, RejectReason::TooLarge);
    assert_eq!(reason(&f, &server.url("/chunked.png")).await, RejectReason::TooLarge);
    assert_eq!(reason(&f, &server.url("/declared-huge.png")).await, RejectReason::TooLarge);
    assert_eq!(reason(&f, &server.url("/loop")).await, RejectReason::TooManyRedirects);
    assert_eq!(server.hits("/loop"), 4, "the first request and max_redirects = 3 hops");
    assert_eq!(reason(&f, &server.url("/to-file")).await, RejectReason::BadUrl);
    assert_eq!(reason(&f, "http://127.0.0.1:1/x.png").await, RejectReason::FetchFailed);
}

#[tokio::test]
async fn retries_only_timeouts_and_server_errors() {
    let server = TestServer::start().await;
    let f = fetcher(&FetchConfig { retries: 2, ..config(true) });
    f.fetch(&Url::parse(&server.url("/flaky.png")).expect("url")).await.expect("second attempt succeeds");
    assert_eq!(server.hits("/flaky.png"), 2);
    assert_eq!(reason(&f, &server.url("/down.png")).await, RejectReason::HttpStatus);
    assert_eq!(server.hits("/down.png"), 3, "one attempt and two retries");
    assert_eq!(reason(&f, &server.url("/missing.png")).await, RejectReason::HttpStatus);
    assert_eq!(server.hits("/missing.png"), 1, "a 404 is not retried");
    let quick = fetcher(&FetchConfig { retries: 1, timeout_seconds: 0.2, ..config(true) });
    assert_eq!(reason(&quick, &server.url("/slow.png")).await, RejectReason::FetchTimeout);
    assert_eq!(server.hits("/slow.png"), 2, "a timeout is retried");
}

#[tokio::test]
async fn the_guard_refuses_internal_addresses_without_connecting() {
    let server = TestServer::start().await;
    let guarded = fetcher(&config(false));
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/ok.png"),
        format!("http://localhost:{port}/ok.png"),
        format!("http://[::1]:{port}/ok.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok.png"),
        format!("http://[::ffff:7f00:1]:{port}/ok.png"),
        format!("http://0x7f.1:{port}/ok.png"),
        format!("http://2130706433:{port}/ok.png"),
        format!("http://0.0.0.0:{port}/ok.png"),
        format!("http://10.1.2.3:{port}/ok.png"),
        format!("http://192.168.0.10:{port}/ok.png"),
        format!("http://169.254.169.254:{port}/latest/meta-data"),
        format!("http://[fd00::1]:{port}/ok.png"),
        format!("http://[fe80::1]:{port}/ok.png"),
    ] {
        assert_eq!(reason(&guarded, &url).await, RejectReason::BlockedAddress, "{url}");
    }
    // The server accepts connections in order: had any refused fetch connected, it would be
    // counted before this allowed one, which the server has answered by the time we return.
    let open = fetcher(&config(true));
    open.fetch(&Url::parse(&format!("http://localhost:{port}/ok.png")).expect("url")).await.expect("allowed");
    assert_eq!(server.connections(), 1, "no refused URL reached the server");
    assert_eq!(server.hits("/ok.png"), 1);
}
