//! Throwaway certificates for the TLS tests.

use std::{fs, path::PathBuf, process::Command};

/// A throwaway directory with a CA, a server certificate for one subject alternative name
/// and a client certificate, made by the openssl command.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// The server's certificate names `server_name` (`IP:127.0.0.1`, `DNS:a.b.svc`).
    pub fn new(name: &str, server_name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("reapwatch-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("pki dir");
        let pki = Self { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=reapwatch test CA",
        ]);
        pki.signed(
            "server",
            &format!("subjectAltName={server_name}\nextendedKeyUsage=serverAuth\n"),
        );
        pki.signed("client", "extendedKeyUsage=clientAuth\n");
        pki
    }

    /// `NAME.key` and `NAME.crt`, signed by the CA with `extensions`.
    fn signed(&self, name: &str, extensions: &str) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        fs::write(self.dir.join(&ext), extensions).expect("extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
