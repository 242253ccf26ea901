//! A real Prometheus server for the tests, and the helpers that read what
//! `deploy/` ships (the Grafana dashboard, the rules) as Prometheus and
//! Grafana would:
//! - [`PrometheusServer`]: Debian's `prometheus` binary with a config the
//!   test writes (1 s scrapes and rule evaluations, data in the test's
//!   folder), queried through its HTTP API;
//! - [`selectors`], [`metric_names`], [`grouping_labels`]: a small `PromQL`
//!   tokenizer, enough to tell metric names from functions, keywords,
//!   label names, strings and durations;
//! - [`dashboard_queries`], [`variable_queries`], [`interpolate`]: the
//!   dashboard's queries, with template variables substituted the way
//!   Grafana substitutes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::exporter::{free_port, http_get};

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Read and parse a JSON file, panicking with its path on any error.
pub fn load_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// One series of a query answer: its labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A rule as the server loaded it (`/api/v1/rules`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The group the rule is in.
    pub group: String,
    /// `recording` or `alerting`.
    pub kind: String,
    /// The recorded series' name, or the alert's name.
    pub name: String,
    /// The `PromQL` expression.
    pub query: String,
}

/// The longest any wait on the server lasts.
const WAIT: Duration = Duration::from_secs(30);

/// A Prometheus server on 127.0.0.1, scraping the given targets every
/// second as job `job`; killed on drop.
pub struct PrometheusServer {
    child: Child,
    pub addr: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl PrometheusServer {
    /// Write `dir/prometheus.yml` (1 s scrape and evaluation intervals,
    /// one job, `rule_files`), start `prometheus` on a free port with its
    /// data in `dir`, and wait (up to 30 s) until `/-/ready` answers 200.
    pub fn start(dir: &Path, job: &str, targets: &[SocketAddr], rule_files: &[PathBuf]) -> Self {
        let config = dir.join("prometheus.yml");
        fs::write(&config, test_config(job, targets, rule_files))
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let data = dir.join(format!("prometheus-data-{port}"));
        let log = dir.join(format!("prometheus-{port}.log"));
        let log_file = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err_file = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (cargo xtask setup installs it): {e}")
            });
        let mut server = Self {
            child,
            addr,
            data,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "prometheus exited with {status} at start-up:\n{}",
                    server.log()
                );
            }
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {WAIT:?}:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an API path (with its query string) and return the `data` of a
    /// `"status": "success"` answer; panic with the error otherwise.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path} from prometheus: {e}\n{}", self.log()));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: status {status}, not JSON ({e}): {body}"));
        assert!(
            status == 200 && json["status"] == "success",
            "GET {path}: status {status}: {} {}",
            json["errorType"],
            json["error"]
        );
        json["data"].clone()
    }

    /// Evaluate `expr` now (`/api/v1/query`).
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        self.query_path(expr, &format!("/api/v1/query?query={}", url_encode(expr)))
    }

    /// Evaluate `expr` at `time` (Unix seconds), so that `time()` in it is
    /// exactly `time`.
    pub fn query_at(&self, expr: &str, time: u64) -> Vec<Sample> {
        self.query_path(
            expr,
            &format!("/api/v1/query?query={}&time={time}", url_encode(expr)),
        )
    }

    fn query_path(&self, expr: &str, path: &str) -> Vec<Sample> {
        let data = self.api(path);
        let parse_value = |pair: &Value| -> f64 {
            pair[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{expr}: bad sample value {pair}"))
        };
        let mut samples: Vec<Sample> = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap_or_else(|| panic!("{expr}: no result in {data}"))
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .unwrap_or_else(|| panic!("{expr}: no labels in {s}"))
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    (labels, parse_value(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), parse_value(&data["result"]))],
            other => panic!("{expr}: result type {other:?} is not an instant vector or scalar"),
        };
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        samples
    }

    /// Evaluate `expr` every 200 ms until `want` holds for the answer (up
    /// to 30 s); return the last answer either way, so the caller's
    /// assertion shows what was there.
    pub fn wait_for(&self, expr: &str, want: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + WAIT;
        loop {
            let samples = self.query(expr);
            if want(&samples) || Instant::now() > deadline {
                return samples;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every rule the server loaded.
    pub fn rules(&self) -> Vec<Rule> {
        let data = self.api("/api/v1/rules");
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
                rules.push(Rule {
                    group: group["name"].as_str().unwrap_or_default().to_owned(),
                    kind: text("type"),
                    name: text("name"),
                    query: text("query"),
                });
            }
        }
        rules
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.data);
    }
}

/// The configuration the test server runs with.
pub fn test_config(job: &str, targets: &[SocketAddr], rule_files: &[PathBuf]) -> String {
    let mut text = String::from(
        "# Written by the geoip-exporter tests.\n\
         global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    text.push_str("rule_files:\n");
    for file in rule_files {
        let path = fs::canonicalize(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let _ = writeln!(text, "  - {}", yaml_string(&path.display().to_string()));
    }
    let _ = writeln!(
        text,
        "scrape_configs:\n  - job_name: {}\n    static_configs:\n      - targets: [{}]",
        yaml_string(job),
        targets
            .iter()
            .map(|t| yaml_string(&t.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    text
}

/// A double-quoted YAML (and JSON) string.
fn yaml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Percent-encode everything but the unreserved characters of RFC 3986.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The metric names of a `/metrics` text (every sample's name).
pub fn exposed_metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// PromQL tokenizer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    /// A number or a duration (`5m`, `1e3`, `0x1f`).
    Number,
    /// `[...]`: a range or subquery; its contents are durations only.
    Range,
    Punct(&'static str),
}

/// Keywords and aggregation operators: identifiers that are never metric
/// names, whether or not a `(` follows.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "start",
    "end",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "atan2",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const PUNCTS: &[&str] = &[
    "==", "!=", "<=", ">=", "=~", "!~", "(", ")", "{", "}", ",", "+", "-", "*", "/", "%", "^", "<",
    ">", "=", "@",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let (value, next) = read_string(&chars, i)?;
            tokens.push(Token::Str(value));
            i = next;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Number);
        } else if c == '[' {
            let close = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or_else(|| format!("unclosed '[' at {i} in {expr:?}"))?;
            let inside: String = chars[i + 1..i + close].iter().collect();
            // Durations, a subquery's `:`, or a Grafana variable such as
            // `$__rate_interval` before interpolation.
            if !inside.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | ' ' | '$' | '_' | '{' | '}')
            }) {
                return Err(format!("not a range or subquery: [{inside}] in {expr:?}"));
            }
            tokens.push(Token::Range);
            i += close + 1;
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let punct = PUNCTS
                .iter()
                .find(|p| rest.starts_with(**p))
                .ok_or_else(|| format!("unexpected {c:?} at {i} in {expr:?}"))?;
            tokens.push(Token::Punct(punct));
            i += punct.len();
        }
    }
    let mut depth = 0_i32;
    for t in &tokens {
        match t {
            Token::Punct("(") => depth += 1,
            Token::Punct(")") => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced ')' in {expr:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in {expr:?}"));
    }
    Ok(tokens)
}

/// A quoted string starting at `chars[start]`: its value and the index
/// after its closing quote.
fn read_string(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == quote {
            return Ok((value, i + 1));
        }
        if c == '\\' && quote != '`' {
            let escaped = chars
                .get(i + 1)
                .ok_or_else(|| "unterminated escape".to_owned())?;
            value.push(match escaped {
                'n' => '\n',
                't' => '\t',
                other => *other,
            });
            i += 2;
        } else {
            value.push(c);
            i += 1;
        }
    }
    Err(format!(
        "unterminated string starting at {start}: {}",
        chars[start..].iter().collect::<String>()
    ))
}

/// A label matcher of a selector: `label op "value"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

/// A vector selector: the metric name (none for `{...}` alone, unless a
/// `__name__` matcher names it) and its label matchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: Option<String>,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// Whether the selector has the matcher `label op "value"`.
    pub fn has(&self, label: &str, op: &str, value: &str) -> bool {
        self.matchers
            .iter()
            .any(|m| m.label == label && m.op == op && m.value == value)
    }
}

/// The index after the `)` matching the `(` at `tokens[open]`.
fn skip_parens(tokens: &[Token], open: usize) -> Result<usize, String> {
    let mut depth = 0_usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Punct("(") => depth += 1,
            Token::Punct(")") => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
    }
    Err("unbalanced parentheses".to_owned())
}

/// The matchers of the `{...}` at `tokens[open]` and the index after `}`.
fn read_matchers(tokens: &[Token], open: usize) -> Result<(Vec<Matcher>, usize), String> {
    let mut matchers = Vec::new();
    let mut i = open + 1;
    loop {
        match tokens.get(i) {
            Some(Token::Punct("}")) => return Ok((matchers, i + 1)),
            Some(Token::Punct(",")) => i += 1,
            Some(Token::Ident(label)) => match (tokens.get(i + 1), tokens.get(i + 2)) {
                (Some(Token::Punct(op @ ("=" | "!=" | "=~" | "!~"))), Some(Token::Str(value))) => {
                    matchers.push(Matcher {
                        label: label.clone(),
                        op: (*op).to_owned(),
                        value: value.clone(),
                    });
                    i += 3;
                }
                other => return Err(format!("bad label matcher after {label}: {other:?}")),
            },
            other => return Err(format!("bad label matchers: {other:?}")),
        }
    }
}

/// Every vector selector of a `PromQL` expression, in order.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let tokens = tokenize(expr)?;
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let next = tokens.get(i + 1);
                if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                    i = if next == Some(&Token::Punct("(")) {
                        skip_parens(&tokens, i + 1)?
                    } else {
                        i + 1
                    };
                } else if KEYWORDS.contains(&word.as_str()) || next == Some(&Token::Punct("(")) {
                    // A keyword, an aggregation or a function name.
                    i += 1;
                } else if next == Some(&Token::Punct("{")) {
                    let (matchers, after) = read_matchers(&tokens, i + 1)?;
                    found.push(Selector {
                        metric: Some(word.clone()),
                        matchers,
                    });
                    i = after;
                } else {
                    found.push(Selector {
                        metric: Some(word.clone()),
                        matchers: Vec::new(),
                    });
                    i += 1;
                }
            }
            Token::Punct("{") => {
                let (matchers, after) = read_matchers(&tokens, i)?;
                let metric = matchers
                    .iter()
                    .find(|m| m.label == "__name__" && m.op == "=")
                    .map(|m| m.value.clone());
                found.push(Selector { metric, matchers });
                i = after;
            }
            Token::Punct("}") => return Err(format!("unbalanced '}}' in {expr:?}")),
            _ => i += 1,
        }
    }
    Ok(found)
}

/// The metric names an expression reads.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    Ok(selectors(expr)?
        .into_iter()
        .filter_map(|s| s.metric)
        .collect())
}

/// The label names in the expression's `by (...)`, `without (...)`,
/// `on (...)`, `ignoring (...)` and `group_*(...)` lists.
pub fn grouping_labels(expr: &str) -> Result<BTreeSet<String>, String> {
    let tokens = tokenize(expr)?;
    let mut labels = BTreeSet::new();
    for (i, t) in tokens.iter().enumerate() {
        if let Token::Ident(word) = t
            && LABEL_LIST_KEYWORDS.contains(&word.as_str())
            && tokens.get(i + 1) == Some(&Token::Punct("("))
        {
            let end = skip_parens(&tokens, i + 1)?;
            labels.extend(tokens[i + 2..end - 1].iter().filter_map(|t| match t {
                Token::Ident(l) => Some(l.clone()),
                _ => None,
            }));
        }
    }
    Ok(labels)
}

// ---------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------

/// Every panel of a dashboard, with the panels of collapsed rows.
pub fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// One query of one panel.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    pub panel_title: String,
    pub panel_type: String,
    pub ref_id: String,
    /// The `PromQL`, template variables and all.
    pub expr: String,
    pub instant: bool,
}

/// Every panel query of a dashboard (targets with an `expr`).
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in dashboard_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                panel_title: panel["title"].as_str().unwrap_or_default().to_owned(),
                panel_type: panel["type"].as_str().unwrap_or_default().to_owned(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                instant: target["instant"].as_bool().unwrap_or(false),
            });
        }
    }
    out
}

/// A Prometheus template-variable query, as Grafana runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariableQuery {
    /// The `PromQL` it reads: the series selector of
    /// `label_values(selector, label)` (none for `label_values(label)`),
    /// or the expression of `query_result(expr)`.
    pub expr: Option<String>,
    /// The label whose values `label_values` lists.
    pub label: Option<String>,
}

/// Parse a Prometheus template-variable query (`label_values` or
/// `query_result`; the others read no series).
pub fn variable_query(query: &str) -> Result<VariableQuery, String> {
    let query = query.trim();
    let inner = |name: &str| {
        query
            .strip_prefix(name)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        let (expr, label) = match args.rsplit_once(',') {
            Some((selector, label)) => (Some(selector.trim().to_owned()), label),
            None => (None, args),
        };
        return Ok(VariableQuery {
            expr,
            label: Some(label.trim().to_owned()),
        });
    }
    if let Some(expr) = inner("query_result") {
        return Ok(VariableQuery {
            expr: Some(expr.trim().to_owned()),
            label: None,
        });
    }
    Err(format!("unsupported variable query {query:?}"))
}

/// Each query variable's name and parsed query (from the structured
/// `{"query": ...}` form of Grafana 10 and later, or a plain string).
pub fn variable_queries(dashboard: &Value) -> Result<Vec<(String, VariableQuery)>, String> {
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or_default().to_owned();
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .ok_or_else(|| format!("variable {name}: no query"))?;
        out.push((name, variable_query(query)?));
    }
    Ok(out)
}

/// Substitute Grafana template variables (`$name`, `${name}`,
/// `[[name]]`) from `vars`; an unknown variable is an error.
pub fn interpolate(expr: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("unknown variable ${name} in {expr:?}"))
    };
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(braced) = tail.strip_prefix("${") {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?;
            out.push_str(lookup(&braced[..end])?);
            rest = &braced[end + 1..];
        } else if let Some(name_start) = tail.strip_prefix('$') {
            let len = name_start
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(name_start.len());
            if len == 0 {
                return Err(format!("a lone '$' in {expr:?}"));
            }
            out.push_str(lookup(&name_start[..len])?);
            rest = &name_start[len..];
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            let end = bracketed
                .find("]]")
                .ok_or_else(|| format!("unclosed [[ in {expr:?}"))?;
            out.push_str(lookup(&bracketed[..end])?);
            rest = &bracketed[end + 2..];
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A single value of a multi-value variable as Grafana's Prometheus data
/// source writes it into a query: regex metacharacters escaped for a
/// `=~` matcher inside a double-quoted string.
pub fn grafana_regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        if c == '\\' {
            out.push_str(r"\\\\");
        } else if "$^*{}[]'+?.()|".contains(c) {
            out.push_str(r"\\");
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect()
    }

    #[test]
    fn metric_names_skip_functions_keywords_labels_strings_and_durations() {
        assert_eq!(
            names(
                r#"sum by (country) (rate(geoip_connections_opened_total{job=~"$job", direction="inbound"}[5m]))"#
            ),
            ["geoip_connections_opened_total"]
        );
        assert_eq!(
            names(
                "sum(rate(a_total[5m] offset 1h)) by (le) / on (instance) group_left (version) b"
            ),
            ["a_total", "b"]
        );
        assert_eq!(
            names("time() - geoip_exporter_database_build_timestamp_seconds > 45 * 86400"),
            ["geoip_exporter_database_build_timestamp_seconds"]
        );
        assert_eq!(
            names(r#"topk(10, x) or label_replace(y, "dst", "$1", "src", "(foo_bar)") unless z"#),
            ["x", "y", "z"]
        );
        assert_eq!(
            names("max_over_time(rate(c_total[1m])[10m:30s]) @ end() + 1e3 - 0x1F * .5 + inf"),
            ["c_total"]
        );
        assert_eq!(
            names("sum without (instance, direction) (country:geoip_connections:sum)"),
            ["country:geoip_connections:sum"]
        );
        assert_eq!(
            names("count_values(\"version\", build_info) # a comment naming not_a_metric"),
            ["build_info"]
        );
        assert_eq!(
            names(r#"{__name__="named_by_matcher", job="x"} + sum(x) by (job) > bool 0"#),
            ["named_by_matcher", "x"]
        );
        assert_eq!(names("vector(1) + scalar(up)"), ["up"]);
        assert_eq!(
            names("rate(x_total[$__rate_interval]) + increase(y_total[${__range}])"),
            ["x_total", "y_total"],
            "Grafana's range variables are ranges, before interpolation too"
        );
        assert_eq!(
            names(r#"m{a="}", b='{not_a_metric}', c=`raw\`} + n"#),
            ["m", "n"]
        );
    }

    #[test]
    fn selectors_carry_their_matchers() {
        let s = selectors(r#"sum(a{job=~"$job",instance!="x\"y"}) + b{}"#).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].metric.as_deref(), Some("a"));
        assert!(s[0].has("job", "=~", "$job"));
        assert!(s[0].has("instance", "!=", "x\"y"));
        assert!(!s[0].has("instance", "=", "x\"y"));
        assert_eq!(s[1].metric.as_deref(), Some("b"));
        assert!(s[1].matchers.is_empty());
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in [
            r#"a{job="x}"#,
            "sum(a",
            "a[5m",
            "a{job}",
            "a}",
            "a)",
            "a ; b",
            "a[5m\"]",
        ] {
            assert!(metric_names(bad).is_err(), "{bad:?} should not tokenize");
        }
    }

    #[test]
    fn grouping_labels_are_collected() {
        let labels =
            grouping_labels("sum by (country, direction) (x) / on (instance) group_left(v) y")
                .unwrap();
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            ["country", "direction", "instance", "v"]
        );
        assert!(grouping_labels("sum(x)").unwrap().is_empty());
    }

    #[test]
    fn variable_queries_yield_their_promql_and_label() {
        assert_eq!(
            variable_query(r#"label_values(up{job=~"$job"}, instance)"#).unwrap(),
            VariableQuery {
                expr: Some(r#"up{job=~"$job"}"#.to_owned()),
                label: Some("instance".to_owned())
            }
        );
        assert_eq!(
            variable_query("label_values( job )").unwrap(),
            VariableQuery {
                expr: None,
                label: Some("job".to_owned())
            }
        );
        assert_eq!(
            variable_query("query_result(topk(5, x))").unwrap(),
            VariableQuery {
                expr: Some("topk(5, x)".to_owned()),
                label: None
            }
        );
        assert!(variable_query("metrics(geoip_.*)").is_err());
    }

    #[test]
    fn interpolation_substitutes_every_syntax_and_refuses_unknown_names() {
        let vars = [("job", ".*"), ("__rate_interval", "1m"), ("dir", "inbound")];
        assert_eq!(
            interpolate(
                r#"rate(x{job=~"$job",d="${dir}",e="[[dir]]"}[$__rate_interval])"#,
                &vars
            )
            .unwrap(),
            r#"rate(x{job=~".*",d="inbound",e="inbound"}[1m])"#
        );
        assert!(interpolate("x{job=~\"$jobs\"}", &vars).is_err());
        assert!(interpolate("x[$__range]", &vars).is_err());
        assert_eq!(
            interpolate("x[5m:1m]", &vars).unwrap(),
            "x[5m:1m]",
            "a subquery's brackets are not a variable"
        );
    }

    #[test]
    fn regex_escape_matches_grafana() {
        assert_eq!(
            grafana_regex_escape("127.0.0.1:9300"),
            r"127\\.0\\.0\\.1:9300"
        );
        assert_eq!(grafana_regex_escape("a(b)|c"), r"a\\(b\\)\\|c");
        assert_eq!(grafana_regex_escape(r"a\b"), r"a\\\\b");
    }

    #[test]
    fn url_encoding_and_exposed_names() {
        assert_eq!(
            url_encode(r#"a{b="c d"}[5m]"#),
            "a%7Bb%3D%22c%20d%22%7D%5B5m%5D"
        );
        let text = "# HELP x X\n# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"2\"} 2\ny_total 3\n\n";
        assert_eq!(
            exposed_metric_names(text).into_iter().collect::<Vec<_>>(),
            ["x", "y_total"]
        );
    }
}
