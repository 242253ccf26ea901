//! `--web.config.file` against the real binary with a real TLS client
//! (curl): TLS, basic auth with bcrypt, client certificates, certificate
//! reload on file change, and bad files refused with exit code 2.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use geoip_tests::{
    exporter::{Exporter, run_to_exit, temp_dir},
    fixtures::write_database,
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (setup installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and `name`.crt/.key signed by it for 127.0.0.1 with subject CN=`cn`.
fn issue(dir: &Path, name: &str, cn: &str, client: bool) {
    let usage = if client { "clientAuth" } else { "serverAuth" };
    let ext = dir.join(format!("{name}.ext"));
    fs::write(
        &ext,
        format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            ext.to_str().expect("utf-8"),
        ],
    );
}

fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=geoip test CA",
        ],
    );
}

/// curl with `args`; (HTTP status or 0, stderr).
fn curl(dir: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "-v",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Setup {
    dir: PathBuf,
    db: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = temp_dir(name);
    let db = dir.join("test.mmdb");
    write_database(&db);
    make_ca(&dir);
    issue(&dir, "server", "exporter-one", false);
    Setup { dir, db }
}

/// Start with `web_yml`; ready once curl (with `client` arguments) gets
/// `/healthz` over TLS.
fn start(s: &Setup, web_yml: &str, client: &'static [&'static str]) -> Exporter {
    let config = s.dir.join("web.yml");
    fs::write(&config, web_yml).expect("web.yml");
    let dir = s.dir.clone();
    Exporter::start_until(
        &s.dir,
        &[
            "--geoip.database",
            s.db.to_str().expect("utf-8"),
            "--web.config.file",
            config.to_str().expect("utf-8"),
        ],
        move |addr| {
            let url = format!("https://{addr}/healthz");
            let mut args = vec!["--cacert", "ca.crt", url.as_str()];
            args.extend_from_slice(client);
            curl(&dir, &args).0 == 200
        },
    )
}

#[test]
fn tls_and_basic_auth_with_a_real_client() {
    let s = setup("webconfig-auth");
    let hash = bcrypt::hash("correct horse", 6).expect("bcrypt");
    let exporter = start(
        &s,
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
        &[],
    );
    let url = format!("https://{}/metrics", exporter.addr);
    let with = |extra: &[&str]| {
        let mut args = vec!["--cacert", "ca.crt"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&s.dir, &args)
    };
    assert_eq!(with(&["-u", "prometheus:correct horse"]).0, 200);
    let (code, log) = with(&["-u", "prometheus:wrong"]);
    assert_eq!(code, 401, "wrong password");
    assert!(
        log.to_lowercase().contains("www-authenticate: basic"),
        "{log}"
    );
    assert_eq!(with(&["-u", "nobody:correct horse"]).0, 401, "unknown user");
    assert_eq!(with(&[]).0, 401, "no credentials");
    assert_eq!(
        curl(
            &s.dir,
            &[
                "--cacert",
                "ca.crt",
                &format!("https://{}/api/v1/countries", exporter.addr)
            ]
        )
        .0,
        401,
        "every data path is protected"
    );
    assert_eq!(
        curl(
            &s.dir,
            &[
                "--cacert",
                "ca.crt",
                &format!("https://{}/healthz", exporter.addr)
            ]
        )
        .0,
        200,
        "the health check stays open for probes"
    );
    // Plain HTTP to the TLS port is refused (no HTTP answer at all).
    let (code, _) = curl(
        &s.dir,
        &[
            "-u",
            "prometheus:correct horse",
            &format!("http://{}/metrics", exporter.addr),
        ],
    );
    assert_eq!(code, 0, "no TLS, no answer");
    // Still serving after the refusals.
    assert_eq!(with(&["-u", "prometheus:correct horse"]).0, 200);
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn client_certificates_and_certificate_reload() {
    let s = setup("webconfig-mtls");
    issue(&s.dir, "client", "scraper", true);
    let exporter = start(
        &s,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        &["--cert", "client.crt", "--key", "client.key"],
    );
    let url = format!("https://{}/metrics", exporter.addr);
    let (code, _) = curl(&s.dir, &["--cacert", "ca.crt", &url]);
    assert_eq!(code, 0, "no client certificate: handshake refused");
    let with_cert = || {
        curl(
            &s.dir,
            &[
                "--cacert",
                "ca.crt",
                "--cert",
                "client.crt",
                "--key",
                "client.key",
                &url,
            ],
        )
    };
    let (code, log) = with_cert();
    assert_eq!(code, 200, "{log}");
    assert!(log.contains("CN=exporter-one"), "{log}");

    // Renew the server certificate in place: new connections get it.
    issue(&s.dir, "server", "exporter-two", false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while Instant::now() < deadline {
        let (code, l) = with_cert();
        log = l;
        if code == 200 && log.contains("CN=exporter-two") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        log.contains("CN=exporter-two"),
        "renewed certificate served: {log}"
    );

    // A broken renewal keeps the last good certificate.
    fs::write(s.dir.join("server.crt"), "not a certificate").expect("write");
    let (code, log) = with_cert();
    assert_eq!(code, 200, "{log}");
    assert!(log.contains("CN=exporter-two"), "{log}");
    assert!(
        exporter
            .log()
            .contains("cannot be used; still using the previous ones")
    );

    // The certificate replaced by a named pipe (reading one would block
    // for good) and a link to /dev/zero (endless): new connections are
    // still served at once, with the last good certificate.
    let cert = s.dir.join("server.crt");
    for make in [
        |p: &Path| {
            let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo");
            assert!(ok.success());
        },
        |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).expect("symlink"),
    ] {
        fs::remove_file(&cert).expect("rm");
        make(&cert);
        let started = Instant::now();
        let (code, log) = with_cert();
        assert_eq!(code, 200, "{log}");
        assert!(log.contains("CN=exporter-two"), "{log}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        exporter.log().contains("not a regular file"),
        "{}",
        exporter.log()
    );
    // A real certificate put back is used.
    fs::remove_file(&cert).expect("rm");
    issue(&s.dir, "server", "exporter-three", false);
    let (code, log) = with_cert();
    assert_eq!(code, 200, "{log}");
    assert!(log.contains("CN=exporter-three"), "{log}");
    let started = Instant::now();
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_web_config_files_are_usage_errors() {
    let s = setup("webconfig-bad");
    let db = s.db.to_str().expect("utf-8").to_owned();
    for (name, text, needle) in [
        ("yaml.yml", "tls_server_config: [", "is not valid"),
        (
            "cert.yml",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
            "cert_file",
        ),
        (
            "hash.yml",
            "basic_auth_users:\n  alice: secret\n",
            "basic_auth_users.alice is not a bcrypt hash",
        ),
        (
            "key.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.crt\n",
            "key_file",
        ),
    ] {
        let path = s.dir.join(name);
        fs::write(&path, text).expect("write");
        let out = run_to_exit(&[
            "--geoip.database",
            &db,
            "--web.config.file",
            path.to_str().expect("utf-8"),
            "--web.listen-address=127.0.0.1:0",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: names the file: {stderr}");
    }
}
