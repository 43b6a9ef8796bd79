//! Checks on the harness itself, with no larder involved: if these fail, the Nix
//! environment or the helpers are broken, not the server.

use crate::substitution::check_substituted;
use crate::support::nix::s;
use crate::support::Nix;

#[test]
fn nix_helpers_work_against_a_directory_cache() {
    let nix = Nix::new("harness");
    let c = nix.closure("src", 300 * 1024);
    assert!(c.paths.contains(&c.top) && c.paths.contains(&c.mid) && c.paths.contains(&c.leaf));
    assert!(nix.references(&c.store, &c.top).contains(&c.mid));
    assert!(
        nix.references(&c.store, &c.mid).contains(&c.mid),
        "mid refers to itself"
    );
    assert!(nix.nar_hash(&c.store, &c.top).starts_with("sha256:"));

    let (sk, pk) = nix.generate_key("harness-1");
    let dir = nix.dir().join("file-cache");
    let url = format!("file://{}", dir.display());
    nix.copy_to(
        &c.store,
        &format!("{url}?compression=zstd&secret-key={}", s(&sk)),
        &[&c.top],
        None,
    )
    .ok();

    // A directory cache signed with another key is refused under require-sigs.
    let (_, other) = nix.generate_key("harness-1");
    let refused = nix.store("refused");
    nix.substitute(&refused, &c.top, &url, &other, None).fails();
    assert!(!nix.is_valid(&refused, &c.top));

    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &url, &pk, None).ok();
    check_substituted(&nix, &c, &dst);

    let info = nix.path_info(&url, &c.top, None);
    assert!(Nix::info_valid(&info), "{info}");
    let missing = nix.path_info(&url, "/nix/store/00000000000000000000000000000000-x", None);
    assert!(!Nix::info_valid(&missing), "{missing}");

    // The two client environments do not share state.
    let other_env = Nix::new("harness");
    assert_ne!(other_env.salt(), nix.salt());
}

#[test]
fn raw_http_parsing() {
    use crate::support::http::{raw, RawOutcome};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answers: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"",
    ];
    let server = std::thread::spawn(move || {
        for a in answers {
            let (mut sock, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf);
            sock.write_all(a).unwrap();
        }
    });
    let get = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    let t = std::time::Duration::from_secs(5);
    let outcomes: Vec<RawOutcome> = (0..5).map(|_| raw(&addr, get, false, t)).collect();
    server.join().unwrap();
    let summary: Vec<Option<(u16, Vec<u8>, bool)>> = outcomes
        .into_iter()
        .map(|o| match o {
            RawOutcome::Response(r) => Some((r.status, r.body, r.complete)),
            RawOutcome::NoResponse(_) => None,
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            Some((200, b"hello".to_vec(), true)),
            Some((200, b"hello".to_vec(), false)),
            Some((200, b"hello".to_vec(), true)),
            Some((200, b"hello".to_vec(), false)),
            None,
        ]
    );
}
