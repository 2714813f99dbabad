//! `--web-config-file`: TLS and basic authentication in the format of the Prometheus
//! exporter-toolkit (node_exporter's `--web.config.file`), reloaded when it changes.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...
//! ```

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use subtle::ConstantTimeEq;
use tokio_rustls::TlsAcceptor;
use yaml_rust2::{parser::Parser, Event, Yaml, YamlLoader};

use super::checker::Checker;

/// What the web config file asks for.
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// User name to bcrypt hash; empty: no authentication.
    users: HashMap<String, String>,
    /// The hash of the highest cost, which unknown users are checked against; None: no
    /// users, no authentication.
    costliest_hash: Option<String>,
}

impl WebConfig {
    /// Plain HTTP, no authentication: no `--web-config-file`.
    pub fn plain_http() -> Self {
        Self {
            tls: None,
            users: HashMap::new(),
            costliest_hash: None,
        }
    }

    /// Loads the file at `path`; `files` gets the files it names (certificates, key, CA) as
    /// they are read, also when one of them fails to load: they are watched with it.
    pub fn load(path: &Path, files: &mut Vec<PathBuf>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read web config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, files)
            .with_context(|| format!("invalid web config {}", path.display()))
    }

    /// The file's text; relative paths in it are relative to `base`, as exporter-toolkit
    /// takes them.
    fn parse(text: &str, base: &Path, files: &mut Vec<PathBuf>) -> Result<Self> {
        shallow_and_without_aliases(text)?;
        let documents =
            YamlLoader::load_from_str(text).map_err(|err| anyhow!("not YAML: {err}"))?;
        let mut config = Self::plain_http();
        let top = match documents.as_slice() {
            [] | [Yaml::Null] => return Ok(config),
            [Yaml::Hash(top)] => top,
            _ => bail!("expected one mapping of tls_server_config and basic_auth_users"),
        };
        for (key, value) in top {
            match (key.as_str(), value) {
                (Some("tls_server_config"), Yaml::Null) => {}
                (Some("tls_server_config"), Yaml::Hash(tls)) => {
                    config.tls = Some(tls_acceptor(tls, base, files)?);
                }
                (Some("basic_auth_users"), Yaml::Null) => {}
                (Some("basic_auth_users"), Yaml::Hash(users)) => {
                    for (user, hash) in users {
                        let (Some(user), Some(hash)) = (user.as_str(), hash.as_str()) else {
                            bail!("basic_auth_users: expected user: bcrypt-hash strings");
                        };
                        let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
                            bail!("basic_auth_users: {user}: not a bcrypt hash");
                        };
                        let cost = parts.get_cost();
                        if cost < 4 {
                            // bcrypt's least: such a hash would refuse every password.
                            bail!("basic_auth_users: {user}: bcrypt cost {cost} is below 4");
                        }
                        if cost > MAX_BCRYPT_COST {
                            bail!(
                                "basic_auth_users: {user}: bcrypt cost {cost} is above \
                                 {MAX_BCRYPT_COST}, the most reapwatch checks (one check at \
                                 cost {MAX_BCRYPT_COST} takes about half a second)"
                            );
                        }
                        let costliest = config
                            .costliest_hash
                            .as_ref()
                            .and_then(|h| h.parse::<bcrypt::HashParts>().ok())
                            .map_or(0, |parts| parts.get_cost());
                        if cost >= costliest {
                            config.costliest_hash = Some(hash.to_owned());
                        }
                        config.users.insert(user.to_owned(), hash.to_owned());
                    }
                }
                (Some(key @ ("tls_server_config" | "basic_auth_users")), _) => {
                    bail!("{key}: expected a mapping")
                }
                (Some(other), _) => {
                    bail!("{other}: not supported (tls_server_config and basic_auth_users are)")
                }
                (None, _) => bail!("keys must be strings"),
            }
        }
        Ok(config)
    }
}

/// The highest bcrypt cost accepted. Each step doubles the time of a check: at 12 one takes
/// 0.46 to 0.57 s on the project's 2-core build machine (release build; 0.10 to 0.15 s at
/// 10), so a first login waits about a second behind a flood (the check in progress, then
/// its own). exporter-toolkit accepts up to 31, where one check takes days.
const MAX_BCRYPT_COST: u32 = 12;

/// The web config is three levels deep at most.
const MAX_DEPTH: usize = 8;

/// yaml-rust2 loads (and drops) nested nodes recursively, so a deeply nested file would
/// overflow the stack, and it copies aliased nodes, so aliases of aliases grow exponentially:
/// both are refused by a pass over the parser's events, which is iterative.
fn shallow_and_without_aliases(text: &str) -> Result<()> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|err| anyhow!("not YAML: {err}"))?;
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    bail!(
                        "nested more than {MAX_DEPTH} levels deep at line {}",
                        mark.line()
                    );
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Alias(_) => bail!("aliases are not supported (line {})", mark.line()),
            Event::StreamEnd => return Ok(()),
            _ => {}
        }
    }
}

/// `tls_server_config`: the certificate and key, and whether and how clients are verified.
fn tls_acceptor(
    tls: &yaml_rust2::yaml::Hash,
    base: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<TlsAcceptor> {
    let string = |name: &str| -> Result<Option<String>> {
        match tls.get(&Yaml::String(name.to_owned())) {
            None | Some(Yaml::Null) => Ok(None),
            Some(Yaml::String(value)) if value.is_empty() => Ok(None),
            Some(Yaml::String(value)) => Ok(Some(value.clone())),
            Some(_) => bail!("tls_server_config: {name}: expected a string"),
        }
    };
    const KNOWN: [&str; 6] = [
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
    ];
    for key in tls.keys() {
        match key.as_str() {
            Some(known) if KNOWN.contains(&known) => {}
            Some(other) => bail!("tls_server_config: {other}: not supported"),
            None => bail!("tls_server_config: keys must be strings"),
        }
    }
    let mut file = |name: &str| -> Result<Option<PathBuf>> {
        Ok(string(name)?.map(|value| {
            let path = base.join(value);
            files.push(path.clone());
            path
        }))
    };
    let (Some(cert_file), Some(key_file)) = (file("cert_file")?, file("key_file")?) else {
        bail!("tls_server_config: cert_file and key_file are required");
    };
    let client_ca_file = file("client_ca_file")?;
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| anyhow!("cert_file {}: {err}", cert_file.display()))?;
    if certs.is_empty() {
        bail!("cert_file {}: no certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|err| anyhow!("key_file {}: {err}", key_file.display()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match (string("client_auth_type")?.as_deref(), client_ca_file) {
        (None | Some("NoClientCert"), _) => WebPkiClientVerifier::no_client_auth(),
        (Some(kind @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven")), ca) => {
            let Some(ca) = ca else {
                bail!("tls_server_config: client_auth_type {kind} needs client_ca_file");
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca)
                .map_err(|err| anyhow!("client_ca_file {}: {err}", ca.display()))?
            {
                let cert = cert.map_err(|err| anyhow!("client_ca_file {}: {err}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| anyhow!("client_ca_file {}: {err}", ca.display()))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if kind == "VerifyClientCertIfGiven" {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|err| anyhow!("client_ca_file {}: {err}", ca.display()))?
        }
        (Some(other), _) => bail!(
            "tls_server_config: client_auth_type {other} not supported: use NoClientCert, \
             VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        ),
    };
    let version = |name: &str| -> Result<Option<&'static rustls::SupportedProtocolVersion>> {
        match string(name)?.as_deref() {
            None => Ok(None),
            Some("TLS12") => Ok(Some(&rustls::version::TLS12)),
            Some("TLS13") => Ok(Some(&rustls::version::TLS13)),
            Some(other) => {
                bail!("tls_server_config: {name} {other} not supported: use TLS12 or TLS13")
            }
        }
    };
    let (min, max) = (version("min_version")?, version("max_version")?);
    let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| min.is_none_or(|min| u16::from(v.version) >= u16::from(min.version)))
        .filter(|v| max.is_none_or(|max| u16::from(v.version) <= u16::from(max.version)))
        .collect();
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|err| anyhow!("tls_server_config: min_version/max_version: {err}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|err| anyhow!("cert_file/key_file: {err}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The web config file as last loaded, reloaded when it or a file its newest version names
/// changes (checked at each new connection: no watcher thread). A broken new version keeps
/// the old one served, and the files it names watched, so that their arrival loads it.
pub struct WebConfigFile {
    path: PathBuf,
    /// The files the newest version names, whether it loaded or not.
    named: Vec<PathBuf>,
    stamps: Vec<Option<Stamp>>,
    current: Arc<WebConfig>,
}

/// What tells a changed file: a new inode (a Kubernetes secret's atomic swap), size or mtime.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl WebConfigFile {
    /// Loads it at start-up, where a broken file is an error.
    pub fn open(path: PathBuf) -> Result<Self> {
        let mut named = Vec::new();
        let current = Arc::new(WebConfig::load(&path, &mut named)?);
        let mut file = Self {
            path,
            named,
            stamps: Vec::new(),
            current,
        };
        file.stamps = file.stamp();
        Ok(file)
    }

    fn stamp(&self) -> Vec<Option<Stamp>> {
        std::iter::once(&self.path)
            .chain(&self.named)
            .map(|path| {
                std::fs::metadata(path).ok().map(|m| Stamp {
                    inode: m.ino(),
                    len: m.len(),
                    mtime: m.mtime(),
                    mtime_nsec: m.mtime_nsec(),
                })
            })
            .collect()
    }

    /// The config to serve a new connection with, reloaded first if the files changed.
    pub fn current(&mut self) -> Arc<WebConfig> {
        if self.stamp() != self.stamps {
            self.named.clear();
            match WebConfig::load(&self.path, &mut self.named) {
                Ok(config) => {
                    log::info!("web config {} reloaded", self.path.display());
                    self.current = Arc::new(config);
                }
                // Warned once per change: the stamps are those of the broken version.
                Err(err) => log::warn!("{err:#}; keeping the previous web config"),
            }
            // The files this version names, from now on.
            self.stamps = self.stamp();
        }
        self.current.clone()
    }
}

/// Checks HTTP basic authentication. bcrypt is deliberately slow (about 0.1 s at cost 10,
/// more in a debug build): checks run on the [`Checker`]'s thread, rationed per
/// source, and a credential verified once is remembered. An unknown user is checked against
/// the costliest user's hash, so that it takes as long and is told the same.
pub struct Authenticator {
    checker: Checker,
    /// User name to (bcrypt hash, password it verified).
    verified: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Not checked: this source has a check waiting already, or the queue is full of
    /// sources with no more strikes.
    Throttled,
}

impl Authenticator {
    /// Starts the bcrypt thread: at start-up, whether the web config has users yet or not.
    pub fn start() -> Result<Self> {
        Ok(Self {
            checker: Checker::start()?,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the `Authorization` header's credentials, from `source`, are those of a
    /// user of `config`.
    pub async fn check(
        &self,
        config: &WebConfig,
        authorization: Option<&[u8]>,
        source: IpAddr,
    ) -> Verdict {
        let Some(costliest) = &config.costliest_hash else {
            return Verdict::Allowed;
        };
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Verdict::Denied;
        };
        let hash = config.users.get(&user);
        if let Some(hash) = hash {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((verified_hash, verified_password)) = verified.get(&user) {
                if verified_hash == hash && bool::from(verified_password.ct_eq(&password)) {
                    return Verdict::Allowed;
                }
            }
        }
        let checked = hash.unwrap_or(costliest).clone();
        match self
            .checker
            .matches(source, password.clone(), checked.clone())
            .await
        {
            None => Verdict::Throttled,
            Some(true) if hash.is_some() => {
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(user, (checked, password));
                Verdict::Allowed
            }
            Some(_) => Verdict::Denied,
        }
    }
}

/// `Basic base64(user:password)`.
fn basic_credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, encoded) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> WebConfig {
        WebConfig::parse(text, Path::new("/nonexistent"), &mut Vec::new()).unwrap()
    }

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn basic_auth_is_verified_once_then_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = users(&format!("basic_auth_users:\n  prom: '{hash}'\n"));
        let auth = Authenticator::start().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let source = IpAddr::from([10, 0, 0, 1]);
        let check = |config: &WebConfig, header: Option<&[u8]>| {
            runtime.block_on(auth.check(config, header, source))
        };
        assert_eq!(check(&config, None), Verdict::Denied);
        assert_eq!(
            check(&config, Some(&header("prom", "s3cret"))),
            Verdict::Allowed
        );
        for _ in 0..10 {
            assert_eq!(
                check(&config, Some(&header("prom", "s3cret"))),
                Verdict::Allowed
            );
        }
        assert_eq!(
            check(&config, Some(&header("prom", "wrong"))),
            Verdict::Denied
        );
        // Checked against the hash, told the same: the right password of a user for another
        // name gets nothing.
        assert_eq!(
            check(&config, Some(&header("nobody", "s3cret"))),
            Verdict::Denied
        );
        assert_eq!(
            check(&WebConfig::plain_http(), None),
            Verdict::Allowed,
            "no users: no authentication"
        );
    }

    #[test]
    fn unknown_users_are_checked_at_the_highest_cost() {
        let (cheap, dear) = (bcrypt::hash("a", 4).unwrap(), bcrypt::hash("b", 5).unwrap());
        let config = users(&format!(
            "basic_auth_users:\n  dear: '{dear}'\n  cheap: '{cheap}'\n"
        ));
        assert_eq!(config.costliest_hash, Some(dear));
    }

    #[test]
    fn costs_above_the_cap_are_refused() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let at = |cost: u32| hash.replacen("$04$", &format!("${cost:02}$"), 1);
        assert!(WebConfig::parse(
            &format!("basic_auth_users:\n  prom: '{}'\n", at(MAX_BCRYPT_COST)),
            Path::new("/"),
            &mut Vec::new()
        )
        .is_ok());
        // Found by users_and_the_cost_cap: a cost under bcrypt's least loaded, and then
        // refused every password.
        let err = WebConfig::parse(
            &format!("basic_auth_users:\n  prom: '{}'\n", at(0)),
            Path::new("/"),
            &mut Vec::new(),
        )
        .err()
        .map(|err| format!("{err:#}"));
        assert_eq!(
            err.as_deref(),
            Some("basic_auth_users: prom: bcrypt cost 0 is below 4")
        );
        for cost in [MAX_BCRYPT_COST + 1, 31] {
            let err = WebConfig::parse(
                &format!("basic_auth_users:\n  prom: '{}'\n", at(cost)),
                Path::new("/"),
                &mut Vec::new(),
            )
            .err()
            .map(|err| format!("{err:#}"));
            assert!(
                err.as_ref().is_some_and(|err| !err.contains('\n')
                    && err.contains(&format!("bcrypt cost {cost} is above {MAX_BCRYPT_COST}"))),
                "{err:?}"
            );
        }
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        for text in [
            "basic_auth_users:\n  prom: plaintext\n",
            "basic_auth_users: [prom]\n",
            "tls_server_config:\n  cert_file: a.crt\n",
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n",
            "tls_server_config:\n  cipher_suites: [x]\n",
            "http_server_config:\n  http2: false\n",
            "- a\n- b\n",
            "a: [\n",
        ] {
            let Err(err) = WebConfig::parse(text, Path::new("/nonexistent"), &mut Vec::new())
            else {
                panic!("{text:?} accepted");
            };
            let line = format!("{err:#}");
            assert!(!line.contains('\n'), "{text:?}: {line}");
        }
        assert!(
            WebConfig::parse("", Path::new("/"), &mut Vec::new()).is_ok_and(|c| c.tls.is_none())
        );
    }

    #[test]
    fn hostile_authorization_headers() {
        for header in [
            &b""[..],
            b"Basic",
            b"Basic ",
            b"Basic !!!",
            b"Bearer abc",
            b"Basic \xff\xfe",
            b"basic cHJvbQ==",
        ] {
            assert_eq!(basic_credentials(header), None, "{header:?}");
        }
        assert_eq!(
            basic_credentials(b"basic cHJvbTpzOmVjcmV0"),
            Some(("prom".to_owned(), b"s:ecret".to_vec()))
        );
    }
}

/// Random and hostile web config files and headers: never a panic, every error one line.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn check(text: &str) -> std::result::Result<(), TestCaseError> {
        if let Err(err) = WebConfig::parse(text, Path::new("/nonexistent"), &mut Vec::new()) {
            let line = format!("{err:#}");
            prop_assert!(!line.contains('\n'), "{:?}", line);
        }
        Ok(())
    }

    /// A bcrypt hash of `cost` (only its shape: parsing does not verify), or something
    /// close to one.
    fn hash() -> impl Strategy<Value = (String, Option<u32>)> {
        let salt_and_digest = "[./A-Za-z0-9]{53}";
        prop_oneof![
            4 => (0..=40u32, salt_and_digest, prop::sample::select(vec!["2a", "2b", "2y"]))
                .prop_map(|(cost, rest, version)| {
                    let shape_ok = (4..=31).contains(&cost);
                    (format!("${version}${cost:02}${rest}"), shape_ok.then_some(cost))
                }),
            1 => "[ -~]{0,64}".prop_map(|text| (text, None)),
        ]
    }

    /// A file of users and their hashes, and optionally a TLS section that cannot load.
    fn users_file() -> impl Strategy<Value = (String, Vec<Option<u32>>, bool)> {
        (
            prop::collection::vec(("[a-z][a-z0-9_-]{0,12}", hash()), 0..6),
            any::<bool>(),
        )
            .prop_map(|(users, tls)| {
                let mut text = String::new();
                if tls {
                    text +=
                        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n";
                }
                if !users.is_empty() {
                    text += "basic_auth_users:\n";
                }
                let mut costs = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for (user, (hash, cost)) in users {
                    if seen.insert(user.clone()) {
                        text += &format!("  {user}: '{}'\n", hash.replace('\'', "''"));
                        costs.push(cost);
                    }
                }
                (text, costs, tls)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_text_never_panics(text in any::<String>()) {
            check(&text)?;
        }

        /// Users load exactly when every hash is one of a cost up to the cap, and unknown
        /// users are then checked at the highest cost; a cost above it is named in the error.
        #[test]
        fn users_and_the_cost_cap((text, costs, tls) in users_file()) {
            let parsed = WebConfig::parse(&text, Path::new("/nonexistent"), &mut Vec::new());
            let all_valid = costs.iter().all(|c| c.is_some_and(|c| c <= MAX_BCRYPT_COST));
            match parsed {
                Ok(config) => {
                    prop_assert!(all_valid && !tls, "{:?} accepted", text);
                    let costliest = config
                        .costliest_hash
                        .and_then(|h| h.parse::<bcrypt::HashParts>().ok())
                        .map(|parts| parts.get_cost());
                    prop_assert_eq!(costliest, costs.iter().copied().flatten().max());
                }
                Err(err) => {
                    let line = format!("{err:#}");
                    prop_assert!(!line.contains('\n'), "{:?}", line);
                    prop_assert!(!all_valid || tls, "{:?} refused: {}", text, line);
                    if let Some(over) = costs.iter().flatten().find(|&&c| c > MAX_BCRYPT_COST) {
                        // The first bad entry is the one named; a cost above the cap may
                        // follow an entry that is not a hash at all.
                        let first_bad = costs.iter().find(|c| c.is_none_or(|c| c > MAX_BCRYPT_COST));
                        if !tls && first_bad == Some(&Some(*over)) {
                            prop_assert!(line.contains(&format!("bcrypt cost {over} is above")), "{}", line);
                        }
                    }
                }
            }
        }

        #[test]
        fn plausible_files_never_panic(
            key in prop::sample::select(vec!["tls_server_config", "basic_auth_users", "x"]),
            inner in prop::sample::select(vec![
                "cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
                "prometheus",
            ]),
            value in "[ -~]{0,24}",
        ) {
            check(&format!("{key}:\n  {inner}: {value}\n"))?;
        }

        #[test]
        fn any_header_never_panics(header in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = basic_credentials(&header);
        }
    }

    /// yaml-rust2 loads (and drops) nested nodes recursively: a deeply nested file would
    /// overflow the stack, and aliases can expand exponentially.
    #[test]
    fn deep_nesting_and_aliases_are_errors() {
        let block_maps: String = (0..20_000)
            .map(|n| format!("{}k:\n", " ".repeat(n)))
            .collect();
        let laughs = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n";
        for text in [
            "[".repeat(100_000),
            "{a: ".repeat(100_000),
            format!("a:\n{}", " - ".repeat(50_000)),
            block_maps,
            laughs.to_owned(),
        ] {
            let err = WebConfig::parse(&text, Path::new("/nonexistent"), &mut Vec::new())
                .err()
                .map(|err| format!("{err:#}"));
            assert!(
                err.as_ref().is_some_and(|err| !err.contains('\n')),
                "{:?}: {err:?}",
                &text[..40.min(text.len())]
            );
        }
    }
}
