//! The settings of `heartbeater serve`, from four layers: flags over
//! environment variables (`HEARTBEATER_<KEY>`) over the `--config` file
//! (TOML) over the defaults. Every key is declared once, in `settings!`
//! below: its flag, its variable, its file key, its type and its default
//! come from that one line, so the layers cannot drift apart.
//!
//! Each layer is checked on its own, so an error names where the bad value
//! came from: the flag, the variable or the file and key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::HostPort;

/// A value a setting can hold: parsed from a flag or a variable (text) or a
/// TOML value, and shown back as TOML.
pub trait Setting: Sized + Clone {
    /// What a valid value looks like, for error messages.
    const EXPECTED: &'static str;

    /// Every valid value, for a setting chosen from a few words (shell
    /// completion offers them, `--help` lists them); empty for the rest.
    const WORDS: &'static [&'static str] = &[];

    /// Parses `text` (a flag's argument or a variable's value).
    fn parse(text: &str) -> Result<Self, String>;

    /// Converts a TOML value from the config file.
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                Self::parse(&value.to_string())
            }
            other => Err(format!(
                "expected {}, found a {}",
                Self::EXPECTED,
                other.type_str()
            )),
        }
    }

    /// The value as a TOML literal.
    fn show(&self) -> String;
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

macro_rules! number_setting {
    ($($t:ty => $what:literal),*) => {$(
        impl Setting for $t {
            const EXPECTED: &'static str = $what;
            fn parse(text: &str) -> Result<Self, String> {
                text.trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not {}", Self::EXPECTED))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_setting!(
    u64 => "a whole number",
    u32 => "a whole number up to 4294967295",
    usize => "a whole number",
    f64 => "a number"
);

impl Setting for bool {
    const EXPECTED: &'static str = "true or false";
    const WORDS: &'static [&'static str] = &["true", "false"];
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(format!("{other:?} is not {}", Self::EXPECTED)),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for PathBuf {
    const EXPECTED: &'static str = "a path";
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty path".into());
        }
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        quoted(&self.display().to_string())
    }
}

impl Setting for HostPort {
    const EXPECTED: &'static str = "HOST:PORT";
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    fn show(&self) -> String {
        quoted(&self.to_string())
    }
}

/// A duration as people write it: `100ms`, `1.5s`, `2m30s`
/// ([`crate::duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Setting for HumanDuration {
    const EXPECTED: &'static str = "a duration such as 100ms or 2s";
    fn parse(text: &str) -> Result<Self, String> {
        crate::duration::parse(text).map(HumanDuration)
    }
    fn show(&self) -> String {
        quoted(&crate::duration::format(self.0))
    }
}

/// A node's name (`serve --node-id db-2`), checked as the node checks it,
/// so a bad one is refused naming the flag, variable or file key it came
/// from. A UUID given here is the node's own, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(pub String);

impl Setting for NodeId {
    const EXPECTED: &'static str = "a node name (letters, digits, '.', '_', '-') or a UUID";
    fn parse(text: &str) -> Result<Self, String> {
        heartbeater::identity::canonical_identity(text)
            .map(NodeId)
            .map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        quoted(&self.0)
    }
}

/// Where the HTTP listener (metrics, API, status page) binds, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpListen {
    /// No HTTP listener.
    Off,
    /// Listen here.
    On(HostPort),
}

impl Setting for HttpListen {
    const EXPECTED: &'static str = "HOST:PORT or off";
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(HttpListen::Off),
            other => other
                .parse()
                .map(HttpListen::On)
                .map_err(|e| format!("{e}; or off")),
        }
    }
    fn show(&self) -> String {
        match self {
            HttpListen::Off => quoted("off"),
            HttpListen::On(addr) => addr.show(),
        }
    }
}

impl Setting for heartbeater::PauseThreshold {
    const EXPECTED: &'static str = "auto, off or a duration such as 200ms";
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(heartbeater::PauseThreshold::Auto),
            "off" => Ok(heartbeater::PauseThreshold::Off),
            other => crate::duration::parse(other)
                .map(heartbeater::PauseThreshold::Fixed)
                .map_err(|_| format!("{other:?}: expected {}", Self::EXPECTED)),
        }
    }
    fn show(&self) -> String {
        quoted(&match self {
            heartbeater::PauseThreshold::Auto => "auto".to_string(),
            heartbeater::PauseThreshold::Off => "off".to_string(),
            heartbeater::PauseThreshold::Fixed(d) => crate::duration::format(*d),
        })
    }
}

/// Settings chosen from a fixed set of words.
macro_rules! word_setting {
    ($t:ty, $expected:literal, $($word:literal => $value:expr),+) => {
        impl Setting for $t {
            const EXPECTED: &'static str = $expected;
            const WORDS: &'static [&'static str] = &[$($word),+];
            fn parse(text: &str) -> Result<Self, String> {
                match text.trim() {
                    $($word => Ok($value),)+
                    other => Err(format!("{other:?}: expected {}", Self::EXPECTED)),
                }
            }
            fn show(&self) -> String {
                $(if *self == $value { return quoted($word); })+
                String::new()
            }
        }
    };
}

word_setting!(crate::admin::DetectorArg, "count or phi",
    "count" => crate::admin::DetectorArg::Count,
    "phi" => crate::admin::DetectorArg::Phi);

/// How log lines (stderr) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one line per event, colour on a terminal only.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

word_setting!(LogFormat, "text or json",
    "text" => LogFormat::Text,
    "json" => LogFormat::Json);

/// A secret: accepted from any layer, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Setting for Secret {
    const EXPECTED: &'static str = "text";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Secret(text.to_owned()))
    }
    fn show(&self) -> String {
        quoted("<redacted>")
    }
}

/// Parses a flag's argument (clap's value parser for every setting).
fn parse_flag<T: Setting + Send + Sync + 'static>(text: &str) -> Result<T, String> {
    T::parse(text)
}

/// Clap's value parser for every setting: [`Setting::parse`], and the
/// setting's words for shell completion (without them, completion offers
/// file names for `--log-format`).
#[derive(Clone)]
struct SettingParser<T>(std::marker::PhantomData<fn() -> T>);

impl<T> SettingParser<T> {
    fn new() -> Self {
        SettingParser(std::marker::PhantomData)
    }
}

impl<T: Setting + Send + Sync + 'static> clap::builder::TypedValueParser for SettingParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        // A plain function's parser words its errors as clap does.
        clap::builder::TypedValueParser::parse_ref(&parse_flag::<T>, cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        if T::WORDS.is_empty() {
            return None;
        }
        Some(Box::new(
            T::WORDS
                .iter()
                .map(|w| clap::builder::PossibleValue::new(*w)),
        ))
    }
}

/// Adds each setting's variable and default to its line in `serve
/// --help`. Not clap's `env` and `default_value`: those would make clap
/// read the variable and fill in the default itself, as if they were
/// flags, and the layers would no longer be told apart.
pub fn annotate_help(serve: clap::Command) -> clap::Command {
    let defaults = Layer::resolve(Layer::default(), Layer::default(), Layer::default());
    defaults
        .sources
        .iter()
        .fold(serve, |cmd, (key, _, default)| {
            let mut extra = format!("[env: {}]", env_name(key));
            if !default.is_empty() {
                let default = default.trim_matches('"');
                extra.push_str(&format!(" [default: {default}]"));
            }
            cmd.mut_arg(*key, |arg| {
                let help = arg.get_help().map(|h| format!("{h} {extra}"));
                let long = arg.get_long_help().map(|h| format!("{h}\n\n{extra}"));
                let arg = match help {
                    Some(help) => arg.help(help),
                    None => arg.help(extra.clone()),
                };
                match long {
                    Some(long) => arg.long_help(long),
                    None => arg,
                }
            })
        })
}

/// Which layer a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The config file.
    File,
    /// Nobody set it.
    Default,
}

/// The type of an effective value: the setting itself when it has a
/// default, optional when it has none.
macro_rules! effective_ty {
    ($t:ty,) => { Option<$t> };
    ($t:ty, $default:expr) => { $t };
}

macro_rules! effective_value {
    ($v:expr,) => {
        $v
    };
    ($v:expr, $default:expr) => {
        $v.unwrap_or_else(|| $default)
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        [$($arg:tt)*] $key:ident : $t:ty $(= $default:expr)? ;
    )*) => {
        /// Flags of `serve` that are settings (the rest of its flags are
        /// actions: `--config`, `--print-config`).
        #[derive(Debug, Default, clap::Args)]
        pub struct SettingFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_parser = SettingParser::<$t>::new(), $($arg)*)]
                pub $key: Option<$t>,
            )*
        }

        /// One layer: what it sets, and nothing for what it leaves.
        #[derive(Debug, Default, Clone)]
        pub struct Layer {
            $(pub $key: Option<$t>,)*
        }

        /// The settings in effect, each with where it came from.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $(pub $key: effective_ty!($t, $($default)?),)*
            sources: Vec<(&'static str, Source, String)>,
        }

        /// Every key, in declaration order.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl From<SettingFlags> for Layer {
            fn from(f: SettingFlags) -> Layer {
                Layer { $($key: f.$key,)* }
            }
        }

        impl Layer {
            /// Reads `HEARTBEATER_<KEY>` for every key through `var`.
            pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Layer, String> {
                let mut layer = Layer::default();
                $(
                    let name = env_name(stringify!($key));
                    if let Some(text) = var(&name) {
                        layer.$key = Some(<$t as Setting>::parse(&text)
                            .map_err(|e| format!("environment variable {name}: {e}"))?);
                    }
                )*
                Ok(layer)
            }

            /// Reads a config file's text; `origin` names it in errors.
            pub fn from_toml(text: &str, origin: &str) -> Result<Layer, String> {
                let table: toml::Table = text
                    .parse()
                    .map_err(|e| format!("config file {origin}: not valid TOML: {e}"))?;
                let mut layer = Layer::default();
                for (key, value) in &table {
                    match key.as_str() {
                        $(stringify!($key) => {
                            layer.$key = Some(<$t as Setting>::from_toml(value)
                                .map_err(|e| format!("config file {origin}: {key}: {e}"))?);
                        })*
                        other => return Err(unknown_key(origin, other)),
                    }
                }
                Ok(layer)
            }

            /// Resolves flags over environment over file over defaults.
            pub fn resolve(flags: Layer, env: Layer, file: Layer) -> Settings {
                let mut sources = Vec::new();
                $(
                    let (value, source) = match (flags.$key, env.$key, file.$key) {
                        (Some(v), _, _) => (Some(v), Source::Flag),
                        (None, Some(v), _) => (Some(v), Source::Env),
                        (None, None, Some(v)) => (Some(v), Source::File),
                        (None, None, None) => (None, Source::Default),
                    };
                    let $key: effective_ty!($t, $($default)?) =
                        effective_value!(value, $($default)?);
                    sources.push((stringify!($key), source, shown(&$key)));
                )*
                Settings { $($key,)* sources }
            }
        }
    };
}

/// The TOML literal of an effective value; `None` for an unset optional.
trait Shown {
    fn shown(&self) -> Option<String>;
}

impl<T: Setting> Shown for T {
    fn shown(&self) -> Option<String> {
        Some(self.show())
    }
}

impl<T: Setting> Shown for Option<T> {
    fn shown(&self) -> Option<String> {
        self.as_ref().map(Setting::show)
    }
}

fn shown(value: &impl Shown) -> String {
    value.shown().unwrap_or_default()
}

/// `max_peers` -> `HEARTBEATER_MAX_PEERS`.
pub fn env_name(key: &str) -> String {
    format!("HEARTBEATER_{}", key.to_ascii_uppercase())
}

/// The `HEARTBEATER_*` variables the command line reads that are not
/// settings of `serve`: never taken for typos.
const OTHER_VARIABLES: &[&str] = &[
    "HEARTBEATER_CONFIG",
    "HEARTBEATER_LOG",
    "HEARTBEATER_TOKEN",
    "HEARTBEATER_TLS_CA",
    "HEARTBEATER_CLIENT_CERT",
    "HEARTBEATER_CLIENT_KEY",
];

/// A warning for each variable in `names` that looks like a misspelt
/// setting (`HEARTBEATER_MAXPEERS`), naming the setting it is closest to.
/// A typo in the config file is an error, but the environment is shared
/// with everything else a process runs, so an unknown name there is only
/// worth a warning, and only when it is close to a setting: scripts and
/// tests keep variables of their own under the same prefix.
pub fn misspelt_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    const PREFIX: &str = "HEARTBEATER_";
    let mut warnings = Vec::new();
    for name in names {
        let Some(rest) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| name.get(PREFIX.len()..))
        else {
            continue;
        };
        if OTHER_VARIABLES.contains(&name.as_str()) || KEYS.iter().any(|k| env_name(k) == name) {
            continue;
        }
        let typed = rest.to_ascii_lowercase();
        let closest = KEYS
            .iter()
            .min_by_key(|k| edit_distance(k, &typed))
            .filter(|k| strsim_close(k, &typed));
        if let Some(key) = closest {
            warnings.push(format!(
                "environment variable {name} is not a setting and is ignored; did you mean {}?",
                env_name(key)
            ));
        }
    }
    warnings
}

fn unknown_key(origin: &str, key: &str) -> String {
    let close = KEYS
        .iter()
        .find(|k| strsim_close(k, key))
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    format!(
        "config file {origin}: unknown key {key:?}{close}; the keys are: {}",
        KEYS.join(", ")
    )
}

/// Whether two keys differ by at most two edits: enough for a typo hint.
fn strsim_close(a: &str, b: &str) -> bool {
    edit_distance(a, b) <= 2
}

/// The Levenshtein distance between two keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

settings! {
    /// Address to listen on for gRPC and heartbeat datagrams (port 0 picks
    /// a free one).
    [value_name = "HOST:PORT"]
    listen: HostPort = HostPort { host: heartbeater::DEFAULT_HOST.into(), port: heartbeater::DEFAULT_PORT };
    /// Address of the HTTP listener: /metrics, /api, /healthz, /readyz and
    /// the status page; `off` disables it [default: 127.0.0.1 and the
    /// listen port + 1000, so 127.0.0.1:9181 beside 8181, and a free port
    /// beside port 0].
    [value_name = "HOST:PORT|off"]
    http_listen: HttpListen;
    /// Where the embedded RocksDB keeps identity, epoch and peers.
    [value_name = "DIR"]
    data_dir: PathBuf = PathBuf::from(heartbeater::DEFAULT_DATA_DIR);
    /// Keep the registry in memory only (a new identity at every start).
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    in_memory: bool = false;
    /// The identity this node answers with and peers are registered by,
    /// instead of the UUID chosen at its first start: 1 to 64 letters,
    /// digits, '.', '_' or '-' (e.g. `db-2`). Stored at the first start;
    /// a data directory that holds another identity is refused.
    [value_name = "NAME"]
    node_id: NodeId;
    /// Explicit epoch (at least the stored one) instead of stored + 1.
    [value_name = "N"]
    epoch: u64;
    /// Heartbeat datagrams over UDP on the listen port; `false` is gRPC
    /// only, for networks that drop UDP (same as --no-udp).
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    udp: bool = true;
    /// Authenticate heartbeat datagrams with the cluster keys in FILE: one
    /// hex-encoded secret (16 to 64 bytes, e.g. `openssl rand -hex 32`) per
    /// line, the first one signs, all are accepted; `#` starts a comment.
    /// SIGHUP reloads the file (the way to rotate keys without a restart).
    [value_name = "FILE"]
    cluster_key_file: PathBuf;
    /// The cluster keys themselves, in the file's format (commas or spaces
    /// between keys); prefer the file, which `ps` and `/proc` do not show.
    /// A key file, when given, wins.
    [value_name = "KEYS", hide = true]
    cluster_keys: Secret;
    /// Indirect probes: before convicting a peer, ask this many other peers
    /// seen ALIVE to heartbeat it (0 to 8; 0 turns them off). One answer
    /// through them keeps the peer ALIVE, shown as reached indirectly; the
    /// detection bound grows by one timeout. Needs a cluster key, which
    /// authenticates the requests and answers: without one they stay off.
    [value_name = "N"]
    indirect_probes: usize = heartbeater::DEFAULT_INDIRECT_PROBES;
    /// The most peers the registry holds; a registration past it is
    /// refused with RESOURCE_EXHAUSTED.
    [value_name = "N"]
    max_peers: usize = heartbeater::DEFAULT_MAX_PEERS;
    /// The shortest heartbeat period a RegisterPeer call over gRPC may ask
    /// for; by default the shortest any registration may (1ms), since
    /// --heartbeat-budget bounds what callers can make the node send.
    [value_name = "DURATION"]
    min_network_freq: HumanDuration = HumanDuration(heartbeater::DEFAULT_MIN_NETWORK_FREQ);
    /// Heartbeats per second all peers together may ask for (each peer
    /// 1000 / its period in ms); a RegisterPeer call over gRPC that would
    /// go past it is refused with RESOURCE_EXHAUSTED. Peers registered
    /// in-process or restored from the data directory count, but are never
    /// refused.
    [value_name = "PER_SECOND"]
    heartbeat_budget: u64 = heartbeater::DEFAULT_NETWORK_HEARTBEAT_BUDGET;
    /// The local-pause guard: when this node did not run for longer than
    /// this (stopped, starved, frozen), no peer is judged on the gap.
    /// `auto` is half the shortest heartbeat period (at least 20ms), `off`
    /// counts every heartbeat.
    [value_name = "auto|off|DURATION"]
    pause_threshold: heartbeater::PauseThreshold = heartbeater::PauseThreshold::Auto;
    /// The rule for registrations that name none: `count` (max-missed
    /// heartbeats) or `phi` (phi accrual).
    [value_name = "count|phi"]
    default_detector: crate::admin::DetectorArg = crate::admin::DetectorArg::Count;
    /// With --default-detector phi: the phi at which peers are convicted
    /// (1 to 64) [default: 8].
    [value_name = "PHI"]
    phi_threshold: f64;
    /// Consecutive valid replies before an unreachable peer is alive again,
    /// for registrations that name none (1 to 100).
    [value_name = "N"]
    default_rise: u32 = 1;
    /// Serve gRPC over TLS with this certificate chain (PEM, the node's
    /// own certificate first). SIGHUP re-reads it.
    [value_name = "FILE"]
    tls_cert: PathBuf;
    /// The private key of --tls-cert (PEM).
    [value_name = "FILE"]
    tls_key: PathBuf;
    /// Mutual TLS: refuse clients without a certificate issued by the CA in
    /// FILE (PEM).
    [value_name = "FILE"]
    tls_client_ca: PathBuf;
    /// The CA (PEM) that peers' certificates chain to, for the connections
    /// this node opens (heartbeats over gRPC); the node presents --tls-cert
    /// there [default: --tls-client-ca].
    [value_name = "FILE"]
    tls_ca: PathBuf;
    /// Require a bearer token from FILE (one per line, all accepted; the
    /// first is sent on this node's own calls) for RegisterPeer and
    /// DeregisterPeer. SIGHUP re-reads it.
    [value_name = "FILE"]
    auth_token_file: PathBuf;
    /// Require the token on reads too (Heartbeat, ListPeers, WatchPeers,
    /// subscriptions, health).
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    auth_reads: bool = false;
    /// The largest request message, in bytes; larger ones are refused with
    /// RESOURCE_EXHAUSTED.
    [value_name = "BYTES"]
    max_request_bytes: usize = heartbeater::DEFAULT_MAX_REQUEST_BYTES;
    /// The most gRPC connections open at once, from all clients (lowered to fit the open-files limit).
    [value_name = "N"]
    max_connections: usize = heartbeater::DEFAULT_MAX_CONNECTIONS;
    /// The most connections one client (an IPv4 address, an IPv6 /64) may hold open.
    [value_name = "N"]
    max_connections_per_address: usize = heartbeater::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
    /// How long a gRPC connection may go without a call before it is closed.
    [value_name = "DURATION"]
    connection_idle_timeout: HumanDuration = HumanDuration(heartbeater::DEFAULT_CONNECTION_IDLE_TIMEOUT);
    /// The most calls in progress on one connection.
    [value_name = "N"]
    max_streams_per_connection: u32 = heartbeater::DEFAULT_MAX_STREAMS_PER_CONNECTION;
    /// The most WatchPeers streams open at once.
    [value_name = "N"]
    max_watchers: usize = heartbeater::DEFAULT_MAX_WATCHERS;
    /// /metrics has per-peer series (state, RTT, missed) only while the
    /// registry holds at most this many peers: past it they are left out
    /// (and `heartbeater_metrics_peer_series_suppressed` is 1), so that a
    /// large registry cannot flood the metrics store. 0 turns them off.
    [value_name = "N"]
    metrics_peer_labels: usize = 100;
    /// Log lines on stderr as `text` or `json` (filter with RUST_LOG).
    [value_name = "text|json"]
    log_format: LogFormat = LogFormat::Text;
    /// Print the start line and peer events on stdout as JSON lines.
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"]
    json: bool = false;
}

impl Settings {
    /// Layers `flags` over the environment (`var`) over the file at
    /// `config` (if any) over the defaults.
    pub fn load(
        flags: Layer,
        config: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let file = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                Layer::from_toml(&text, &path.display().to_string())?
            }
            None => Layer::default(),
        };
        let env = Layer::from_env(var)?;
        let mut settings = Layer::resolve(flags, env, file);
        settings.derive_defaults();
        Ok(settings)
    }

    /// Fills the defaults that depend on other settings: the HTTP port
    /// follows the listen port, so two nodes started side by side with
    /// different ports do not both claim 9181.
    fn derive_defaults(&mut self) {
        if self.http_listen.is_some() {
            return;
        }
        let port = match self.listen.port {
            0 => 0,
            p => p.checked_add(1000).unwrap_or(0),
        };
        let value = HttpListen::On(HostPort {
            host: "127.0.0.1".into(),
            port,
        });
        if let Some(entry) = self
            .sources
            .iter_mut()
            .find(|(k, _, _)| *k == "http_listen")
        {
            entry.2 = value.show();
        }
        self.http_listen = Some(value);
    }

    /// The effective settings as a TOML file that `--config` reads back,
    /// each key commented with where its value came from; secrets are
    /// redacted.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# heartbeater serve: effective settings (flags > HEARTBEATER_* > config file > defaults)\n",
        );
        for (key, source, value) in &self.sources {
            let from = match source {
                Source::Flag => format!("flag --{}", key.replace('_', "-")),
                Source::Env => format!("environment {}", env_name(key)),
                Source::File => "config file".to_string(),
                Source::Default if *key == "http_listen" => {
                    "default: listen port + 1000".to_string()
                }
                Source::Default => "default".to_string(),
            };
            let _ = if value.is_empty() {
                writeln!(out, "# {key} is not set")
            } else {
                writeln!(out, "{key} = {value}  # {from}")
            };
        }
        out
    }

    /// Where `key`'s value came from.
    #[cfg(test)]
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn file(text: &str) -> Layer {
        Layer::from_toml(text, "test.toml").unwrap()
    }

    #[test]
    fn flags_win_over_environment_over_file_over_defaults() {
        let flags = Layer {
            max_peers: Some(1),
            ..Layer::default()
        };
        let env = Layer::from_env(env(&[
            ("HEARTBEATER_MAX_PEERS", "2"),
            ("HEARTBEATER_MAX_WATCHERS", "3"),
        ]))
        .unwrap();
        let file = file("max_peers = 4\nmax_watchers = 5\nmax_request_bytes = 6\n");
        let s = Layer::resolve(flags, env, file);
        assert_eq!(
            (s.max_peers, s.max_watchers, s.max_request_bytes),
            (1, 3, 6)
        );
        assert_eq!(s.max_streams_per_connection, 128, "the default");
        assert_eq!(s.source("max_peers"), Some(&Source::Flag));
        assert_eq!(s.source("max_watchers"), Some(&Source::Env));
        assert_eq!(s.source("max_request_bytes"), Some(&Source::File));
        assert_eq!(
            s.source("max_streams_per_connection"),
            Some(&Source::Default)
        );
    }

    #[test]
    fn a_flag_can_turn_off_what_the_file_turned_on() {
        let flags = Layer {
            in_memory: Some(false),
            ..Layer::default()
        };
        let s = Layer::resolve(flags, Layer::default(), file("in_memory = true"));
        assert!(!s.in_memory);
        let s = Layer::resolve(Layer::default(), Layer::default(), file("in_memory = true"));
        assert!(s.in_memory);
    }

    #[test]
    fn every_type_reads_from_file_and_environment_alike() {
        let text = "listen = \"0.0.0.0:9000\"\nhttp_listen = \"off\"\nepoch = 7\n\
                    min_network_freq = \"50ms\"\npause_threshold = \"off\"\n\
                    default_detector = \"phi\"\nphi_threshold = 10.5\nlog_format = \"json\"\n\
                    data_dir = \"/var/lib/hb\"\nudp = false\n";
        let from_file = Layer::resolve(Layer::default(), Layer::default(), file(text));
        let from_env = Layer::resolve(
            Layer::default(),
            Layer::from_env(env(&[
                ("HEARTBEATER_LISTEN", "0.0.0.0:9000"),
                ("HEARTBEATER_HTTP_LISTEN", "off"),
                ("HEARTBEATER_EPOCH", "7"),
                ("HEARTBEATER_MIN_NETWORK_FREQ", "50ms"),
                ("HEARTBEATER_PAUSE_THRESHOLD", "off"),
                ("HEARTBEATER_DEFAULT_DETECTOR", "phi"),
                ("HEARTBEATER_PHI_THRESHOLD", "10.5"),
                ("HEARTBEATER_LOG_FORMAT", "json"),
                ("HEARTBEATER_DATA_DIR", "/var/lib/hb"),
                ("HEARTBEATER_UDP", "false"),
            ]))
            .unwrap(),
            Layer::default(),
        );
        for s in [from_file, from_env] {
            assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
            assert_eq!(s.http_listen, Some(HttpListen::Off));
            assert_eq!(s.epoch, Some(7));
            assert_eq!(s.min_network_freq.0, Duration::from_millis(50));
            assert_eq!(s.pause_threshold, heartbeater::PauseThreshold::Off);
            assert_eq!(s.default_detector, crate::admin::DetectorArg::Phi);
            assert_eq!(s.phi_threshold, Some(10.5));
            assert_eq!(s.log_format, LogFormat::Json);
            assert_eq!(s.data_dir, PathBuf::from("/var/lib/hb"));
            assert!(!s.udp);
        }
    }

    #[test]
    fn errors_name_the_key_and_where_it_came_from() {
        let e = Layer::from_toml("lisen = \"127.0.0.1:1\"", "a.toml").unwrap_err();
        assert!(e.contains("a.toml") && e.contains("\"lisen\""), "{e}");
        assert!(e.contains("did you mean listen?"), "{e}");
        let e = Layer::from_toml("max_peers = \"many\"", "a.toml").unwrap_err();
        assert!(e.starts_with("config file a.toml: max_peers: "), "{e}");
        let e = Layer::from_toml("udp = 3", "a.toml").unwrap_err();
        assert!(e.contains("udp") && e.contains("true or false"), "{e}");
        let e = Layer::from_toml("listen = [1]", "a.toml").unwrap_err();
        assert!(
            e.contains("listen: expected HOST:PORT, found a array"),
            "{e}"
        );
        let e = Layer::from_toml("listen = ", "a.toml").unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = Layer::from_env(env(&[("HEARTBEATER_PAUSE_THRESHOLD", "sometimes")])).unwrap_err();
        assert!(
            e.starts_with("environment variable HEARTBEATER_PAUSE_THRESHOLD: "),
            "{e}"
        );
        let e = Layer::from_env(env(&[("HEARTBEATER_HTTP_LISTEN", "9181")])).unwrap_err();
        assert!(
            e.contains("HEARTBEATER_HTTP_LISTEN") && e.contains("off"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_variable_names_the_setting_and_others_are_left_alone() {
        let names = [
            "HEARTBEATER_MAXPEERS",
            "HEARTBEATER_max_peers",
            "HEARTBEATER_LISTN",
            "HEARTBEATER_MAX_PEERS",
            "HEARTBEATER_CONFIG",
            "HEARTBEATER_LOG",
            "HEARTBEATER_NETNS",
            "HEARTBEATER_CRASH_ROUNDS",
            "PATH",
        ];
        let warnings = misspelt_variables(names.map(String::from));
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert_eq!(
            warnings[0],
            "environment variable HEARTBEATER_MAXPEERS is not a setting and is ignored; did you mean HEARTBEATER_MAX_PEERS?"
        );
        assert!(
            warnings[1].contains("HEARTBEATER_max_peers"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].ends_with("did you mean HEARTBEATER_LISTEN?"),
            "{}",
            warnings[2]
        );
    }

    #[test]
    fn the_printed_config_reads_back_to_the_same_settings_and_hides_secrets() {
        let env = Layer::from_env(env(&[
            (
                "HEARTBEATER_CLUSTER_KEYS",
                "00112233445566778899aabbccddeeff",
            ),
            ("HEARTBEATER_MAX_PEERS", "42"),
        ]))
        .unwrap();
        let s = Layer::resolve(Layer::default(), env, file("pause_threshold = \"150ms\""));
        let printed = s.to_toml();
        assert!(!printed.contains("00112233"), "{printed}");
        assert!(printed.contains("max_peers = 42  # environment HEARTBEATER_MAX_PEERS"));
        assert!(printed.contains("pause_threshold = \"150ms\"  # config file"));
        assert!(printed.contains("# epoch is not set"));
        // Read back (without the redacted secret), every value is the same.
        let values = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("cluster_keys"))
                .map(|l| l.split("  #").next().unwrap_or(l).to_string())
                .collect()
        };
        let again = Layer::resolve(
            Layer::default(),
            Layer::default(),
            file(&values(&printed).join("\n")),
        );
        assert_eq!(values(&again.to_toml()), values(&printed));
        assert_eq!(again.max_peers, 42);
    }
}
