//! Parsing iptables text: single rules (tokens), `iptables-save` dumps and
//! `iptables-restore --noflush` payloads.
//!
//! The tokenizer follows iptables-restore's own: whitespace separates, double quotes group, and
//! inside quotes a backslash takes the next character literally (iptables-save escapes `"` and
//! `\` in comments that way). Nothing here panics, whatever the input.

use thiserror::Error;

use crate::ruleset::{Chains, Ruleset, TableName};

/// A syntax error, with the 1-based line it was found on (`tokenize` reports line 1).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number in the parsed text.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

/// Splits one rule into its arguments, as iptables-restore does: whitespace separates, double
/// quotes group (`"ns/a:b cluster IP"` is one token, without the quotes; `""` is an empty
/// token), and inside quotes `\"` and `\\` (any `\x`) stand for the escaped character.
pub fn tokenize(rule: &str) -> Result<Vec<String>, ParseError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    // Whether `current` is a token even if empty (it had quotes).
    let mut started = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        None => return Err(ParseError::new(1, "unterminated quote")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => current.push(escaped),
                            None => return Err(ParseError::new(1, "unterminated quote")),
                        },
                        Some(other) => current.push(other),
                    }
                }
            }
            c if c.is_whitespace() => {
                if started {
                    tokens.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                started = true;
                current.push(c);
            }
        }
    }
    if started {
        tokens.push(current);
    }
    Ok(tokens)
}

/// Whether two rule texts are the same rule: equal token vectors (so quoting and spacing do not
/// matter, but option order and `/32` suffixes do). Untokenizable text equals nothing.
pub fn same_rule(a: &str, b: &str) -> bool {
    match (tokenize(a), tokenize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Checks a rule text tokenizes, reporting errors at `line`.
fn check_rule(rule: &str, line: usize) -> Result<(), ParseError> {
    tokenize(rule)
        .map(|_| ())
        .map_err(|e| ParseError::new(line, e.message))
}

/// Splits `rest` after a command option into its first word (a chain) and what follows the
/// single space after it (the rule text, exactly as written).
fn split_word(rest: &str) -> (&str, &str) {
    match rest.split_once(' ') {
        Some((word, tail)) => (word, tail),
        None => (rest, ""),
    }
}

/// Validates a chain name (iptables allows up to 28 characters, no whitespace, no leading `-`
/// or `!`).
fn check_chain(name: &str, line: usize) -> Result<(), ParseError> {
    if name.is_empty() {
        return Err(ParseError::new(line, "missing chain name"));
    }
    if name.len() > 28 {
        return Err(ParseError::new(
            line,
            format!("chain name {name:?} is longer than 28 characters"),
        ));
    }
    if name.starts_with('-') || name.starts_with('!') || name.chars().any(char::is_whitespace) {
        return Err(ParseError::new(
            line,
            format!("invalid chain name {name:?}"),
        ));
    }
    Ok(())
}

/// Parses a chain declaration `:CHAIN POLICY [packets:bytes]` (counters optional), returning
/// the chain name.
fn parse_declaration(line: &str, lineno: usize) -> Result<String, ParseError> {
    let body = line.strip_prefix(':').unwrap_or(line);
    let mut words = body.split_whitespace();
    let name = words.next().unwrap_or("");
    check_chain(name, lineno)?;
    if words.next().is_none() {
        return Err(ParseError::new(
            lineno,
            format!("chain {name}: missing policy"),
        ));
    }
    match (words.next(), words.next()) {
        (None, _) => {}
        (Some(counters), None) if counters.starts_with('[') && counters.ends_with(']') => {}
        _ => {
            return Err(ParseError::new(
                lineno,
                format!("chain {name}: malformed declaration"),
            ));
        }
    }
    Ok(name.to_string())
}

/// Strips the `[packets:bytes] ` prefix `iptables-save -c` puts before rules.
fn strip_counters(line: &str) -> &str {
    if line.starts_with('[')
        && let Some(end) = line.find(']')
    {
        return line[end + 1..].trim_start();
    }
    line
}

/// Lines of `text`, numbered from 1, trailing whitespace (and `\r`) removed; blank lines and
/// `#` comments left out.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end()))
        .filter(|(_, l)| !l.trim_start().is_empty() && !l.trim_start().starts_with('#'))
}

/// Parses `iptables-save` output. Only the `filter` and `nat` tables are kept (others, such as
/// `mangle` or `raw`, are skipped). Every declared chain is present, even when empty; each rule
/// is stored as the text after `-A CHAIN `, exactly as printed.
pub fn parse_save(text: &str) -> Result<Ruleset, ParseError> {
    // (table, its chains or None when skipped, the line it started on)
    let mut open: Option<(Option<TableName>, Chains, usize)> = None;
    let mut ruleset = Ruleset::default();
    for (lineno, raw) in content_lines(text) {
        let line = raw.trim_start();
        if let Some(name) = line.strip_prefix('*') {
            if open.is_some() {
                return Err(ParseError::new(lineno, "table started before COMMIT"));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(ParseError::new(lineno, "missing table name"));
            }
            let table = TableName::parse(name);
            if let Some(t) = table
                && ruleset.tables.contains_key(&t)
            {
                return Err(ParseError::new(lineno, format!("table {t} appears twice")));
            }
            open = Some((table, Chains::new(), lineno));
            continue;
        }
        let Some((table, chains, _)) = open.as_mut() else {
            return Err(ParseError::new(lineno, "expected `*table`"));
        };
        if line == "COMMIT" {
            if let Some((Some(t), chains, _)) = open.take() {
                ruleset.tables.insert(t, chains);
            }
            continue;
        }
        if table.is_none() {
            // A table we skip: its contents are not ours to check.
            continue;
        }
        if line.starts_with(':') {
            let name = parse_declaration(line, lineno)?;
            chains.entry(name).or_default();
            continue;
        }
        let line = strip_counters(line);
        let Some(rest) = line.strip_prefix("-A ") else {
            return Err(ParseError::new(
                lineno,
                format!("unexpected line {:?}", truncate(line)),
            ));
        };
        let (chain, rule) = split_word(rest);
        check_chain(chain, lineno)?;
        check_rule(rule, lineno)?;
        let Some(rules) = chains.get_mut(chain) else {
            return Err(ParseError::new(
                lineno,
                format!("rule for undeclared chain {chain}"),
            ));
        };
        rules.push(rule.to_string());
    }
    if let Some((_, _, start)) = open {
        return Err(ParseError::new(
            start,
            "table not ended by COMMIT before end of input",
        ));
    }
    Ok(ruleset)
}

/// At most 80 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// One command of an `iptables-restore --noflush` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `:CHAIN - [0:0]` (or `:CHAIN POLICY [..]`): creates the chain, or flushes it if it
    /// exists.
    Declare(String),
    /// `-A CHAIN rule`.
    Append {
        /// The chain.
        chain: String,
        /// The rule text (rest of the line).
        rule: String,
    },
    /// `-I CHAIN [N] rule`.
    Insert {
        /// The chain.
        chain: String,
        /// 1-based position (1 when not given).
        position: usize,
        /// The rule text.
        rule: String,
    },
    /// `-D CHAIN rule`: deletes the first rule equal to `rule`.
    Delete {
        /// The chain.
        chain: String,
        /// The rule text.
        rule: String,
    },
    /// `-X CHAIN`.
    DeleteChain(String),
    /// `-N CHAIN`.
    NewChain(String),
    /// `-F CHAIN`.
    Flush(String),
    /// A bare `-S`: a listing, written as a performance workaround (it fills
    /// iptables-nft's chain cache once); changes nothing.
    List,
}

/// One table of a restore payload, ended by `COMMIT` (applied atomically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTable {
    /// The table.
    pub table: TableName,
    /// Its commands, in order.
    pub commands: Vec<Command>,
}

/// Parses one command line inside a table.
fn parse_command(line: &str, lineno: usize) -> Result<Command, ParseError> {
    if line.starts_with(':') {
        return parse_declaration(line, lineno).map(Command::Declare);
    }
    if line == "-S" {
        return Ok(Command::List);
    }
    let (option, rest) = split_word(line);
    // A chain-only command: exactly one word after the option.
    let chain_only = |make: fn(String) -> Command| {
        let name = rest.trim_end();
        check_chain(name, lineno)?;
        Ok(make(name.to_string()))
    };
    match option {
        "-A" | "-D" | "-I" => {
            let (chain, mut rule) = split_word(rest);
            check_chain(chain, lineno)?;
            let chain = chain.to_string();
            match option {
                "-A" => {
                    check_rule(rule, lineno)?;
                    Ok(Command::Append {
                        chain,
                        rule: rule.to_string(),
                    })
                }
                "-D" => {
                    check_rule(rule, lineno)?;
                    let (first, tail) = split_word(rule);
                    if rule.is_empty()
                        || (tail.is_empty() && first.chars().all(|c| c.is_ascii_digit()))
                    {
                        return Err(ParseError::new(
                            lineno,
                            "-D needs a rule specification (deleting by number is not supported)",
                        ));
                    }
                    Ok(Command::Delete {
                        chain,
                        rule: rule.to_string(),
                    })
                }
                _ => {
                    let mut position = 1;
                    let (first, tail) = split_word(rule);
                    if !first.is_empty() && first.chars().all(|c| c.is_ascii_digit()) {
                        position = first.parse::<usize>().map_err(|_| {
                            ParseError::new(lineno, format!("invalid rule number {first:?}"))
                        })?;
                        if position == 0 {
                            return Err(ParseError::new(lineno, "invalid rule number 0"));
                        }
                        rule = tail;
                    }
                    check_rule(rule, lineno)?;
                    Ok(Command::Insert {
                        chain,
                        position,
                        rule: rule.to_string(),
                    })
                }
            }
        }
        "-X" => chain_only(Command::DeleteChain),
        "-N" => chain_only(Command::NewChain),
        "-F" => chain_only(Command::Flush),
        _ => Err(ParseError::new(
            lineno,
            format!("unsupported command {:?}", truncate(line)),
        )),
    }
}

/// Parses an `iptables-restore --noflush` payload: tables of commands, each ended by `COMMIT`.
/// Only `filter` and `nat` are accepted (svcroute never writes other tables).
pub fn parse_restore(text: &str) -> Result<Vec<RestoreTable>, ParseError> {
    let mut tables = Vec::new();
    let mut open: Option<(RestoreTable, usize)> = None;
    for (lineno, raw) in content_lines(text) {
        let line = raw.trim_start();
        if let Some(name) = line.strip_prefix('*') {
            if open.is_some() {
                return Err(ParseError::new(lineno, "table started before COMMIT"));
            }
            let name = name.trim();
            let table = TableName::parse(name).ok_or_else(|| {
                ParseError::new(lineno, format!("unsupported table {:?}", truncate(name)))
            })?;
            open = Some((
                RestoreTable {
                    table,
                    commands: Vec::new(),
                },
                lineno,
            ));
            continue;
        }
        let Some((table, _)) = open.as_mut() else {
            return Err(ParseError::new(lineno, "expected `*table`"));
        };
        if line == "COMMIT" {
            if let Some((t, _)) = open.take() {
                tables.push(t);
            }
            continue;
        }
        table.commands.push(parse_command(line, lineno)?);
    }
    if let Some((_, start)) = open {
        return Err(ParseError::new(
            start,
            "table not ended by COMMIT before end of input",
        ));
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tokenize_splits_and_groups() {
        assert_eq!(
            tokenize(r#"-m comment --comment "ns/a:b cluster IP" -j KUBE-SVC-X"#).unwrap(),
            toks(&[
                "-m",
                "comment",
                "--comment",
                "ns/a:b cluster IP",
                "-j",
                "KUBE-SVC-X"
            ])
        );
        assert_eq!(tokenize("  a \t b  ").unwrap(), toks(&["a", "b"]));
        assert_eq!(tokenize("").unwrap(), Vec::<String>::new());
        assert_eq!(
            tokenize(r#"--comment """#).unwrap(),
            toks(&["--comment", ""])
        );
        assert_eq!(
            tokenize(r#""with \"quote\" and \\ back""#).unwrap(),
            toks(&[r#"with "quote" and \ back"#])
        );
        assert_eq!(tokenize(r#"a"b c"d"#).unwrap(), toks(&["ab cd"]));
        // Outside quotes a backslash is an ordinary character.
        assert_eq!(tokenize(r"a\b").unwrap(), toks(&[r"a\b"]));
    }

    #[test]
    fn tokenize_rejects_unterminated_quotes() {
        assert!(tokenize(r#"-m comment --comment "open"#).is_err());
        assert!(tokenize(r#""ends in escape\"#).is_err());
        assert!(tokenize(r#""escaped end\""#).is_err());
    }

    #[test]
    fn same_rule_compares_tokens() {
        assert!(same_rule(
            r#"-m comment --comment "x" -j ACCEPT"#,
            "-m  comment --comment x -j ACCEPT"
        ));
        assert!(!same_rule(
            "-s 1.1.1.1 -j ACCEPT",
            "-s 1.1.1.1/32 -j ACCEPT"
        ));
        assert!(!same_rule("\"", "\""));
    }

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 21:30:59 2026
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j MARK --set-xmark 0x1/0xffffffff
this line is not checked
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:345]
:OUTPUT ACCEPT [0:0]
:KUBE-EMPTY - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m comment --comment "ns/a:b has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
[3:180] -A KUBE-SERVICES -j RETURN
COMMIT
# Completed on Sat Nov 21 21:30:59 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -j MASQUERADE
COMMIT
"#;

    #[test]
    fn parse_save_keeps_filter_and_nat() {
        // KUBE-NODEPORTS is used as a target but never declared in filter: fine, a rule's
        // target is not the parser's business. The INPUT rule's chain is declared.
        let rs = parse_save(SAVE).unwrap();
        assert_eq!(rs.tables.len(), 2);
        let filter = rs.chains(TableName::Filter).unwrap();
        assert_eq!(
            filter.keys().collect::<Vec<_>>(),
            ["FORWARD", "INPUT", "KUBE-EMPTY", "KUBE-SERVICES", "OUTPUT"]
        );
        assert!(filter["KUBE-EMPTY"].is_empty());
        assert_eq!(
            filter["KUBE-SERVICES"],
            vec![
                r#"-d 10.0.0.1/32 -p tcp -m comment --comment "ns/a:b has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"#.to_string(),
                "-j RETURN".to_string(),
            ]
        );
        assert_eq!(
            rs.chain(TableName::Nat, "POSTROUTING").unwrap(),
            ["-j MASQUERADE".to_string()]
        );
        assert_eq!(rs.rule_count(), 4);
    }

    #[test]
    fn parse_save_round_trips_to_save_format() {
        let rs = parse_save(SAVE).unwrap();
        assert_eq!(parse_save(&rs.to_save_format()).unwrap(), rs);
    }

    #[test]
    fn parse_save_errors() {
        let err = |t: &str| parse_save(t).unwrap_err();
        assert_eq!(err("*filter\n:INPUT ACCEPT [0:0]\n").line, 1);
        assert_eq!(err("*filter\n-A KUBE-X -j DROP\nCOMMIT\n").line, 2);
        assert_eq!(err("-A INPUT -j DROP\n").line, 1);
        assert_eq!(err("*filter\n*nat\n").line, 2);
        assert_eq!(
            err("*filter\n:KUBE-X - [0:0]\n-A KUBE-X -m comment --comment \"x\nCOMMIT\n").line,
            3
        );
        assert_eq!(err("*filter\n-P INPUT DROP\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\nCOMMIT\n*filter\nCOMMIT\n").line, 3);
        assert_eq!(err("*filter\n:\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\n:KUBE-X\nCOMMIT\n").line, 2);
        assert!(parse_save("").unwrap().tables.is_empty());
    }

    #[test]
    fn parse_restore_commands() {
        let text = "*filter\n:KUBE-A - [0:0]\n:INPUT ACCEPT [0:0]\n-S\n-N KUBE-B\n\
                    -A KUBE-A -m comment --comment \"a b\" -j ACCEPT\n-I KUBE-A -j DROP\n\
                    -I KUBE-A 3 -s 1.2.3.4 -j RETURN\n-I KUBE-A 12\n-D KUBE-A -j DROP\n-F KUBE-B\n-X KUBE-B\nCOMMIT\n\
                    # comment\n\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n";
        let tables = parse_restore(text).unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].table, TableName::Filter);
        let s = |x: &str| x.to_string();
        assert_eq!(
            tables[0].commands,
            vec![
                Command::Declare(s("KUBE-A")),
                Command::Declare(s("INPUT")),
                Command::List,
                Command::NewChain(s("KUBE-B")),
                Command::Append {
                    chain: s("KUBE-A"),
                    rule: s("-m comment --comment \"a b\" -j ACCEPT")
                },
                Command::Insert {
                    chain: s("KUBE-A"),
                    position: 1,
                    rule: s("-j DROP")
                },
                Command::Insert {
                    chain: s("KUBE-A"),
                    position: 3,
                    rule: s("-s 1.2.3.4 -j RETURN")
                },
                Command::Insert {
                    chain: s("KUBE-A"),
                    position: 12,
                    rule: s("")
                },
                Command::Delete {
                    chain: s("KUBE-A"),
                    rule: s("-j DROP")
                },
                Command::Flush(s("KUBE-B")),
                Command::DeleteChain(s("KUBE-B")),
            ]
        );
        assert_eq!(
            tables[1],
            RestoreTable {
                table: TableName::Nat,
                commands: vec![Command::Append {
                    chain: s("POSTROUTING"),
                    rule: s("-j MASQUERADE")
                }]
            }
        );
    }

    #[test]
    fn parse_restore_errors() {
        let err = |t: &str| parse_restore(t).unwrap_err();
        assert_eq!(err("*mangle\nCOMMIT\n").line, 1);
        assert_eq!(err("*filter\n-A KUBE-A -j DROP\n").line, 1);
        assert_eq!(err("*filter\nCOMMIT\n*nat\n-X\nCOMMIT\n").line, 4);
        assert_eq!(err("*filter\n-F\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\n-D KUBE-A 3\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\n-D KUBE-A\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\n-I KUBE-A 0 -j DROP\nCOMMIT\n").line, 2);
        assert_eq!(
            err("*filter\n-I KUBE-A 99999999999999999999999 -j DROP\nCOMMIT\n").line,
            2
        );
        assert_eq!(err("*filter\n-S KUBE-A\nCOMMIT\n").line, 2);
        assert_eq!(err("*filter\n-P INPUT DROP\nCOMMIT\n").line, 2);
        assert_eq!(
            err("*filter\n-A KUBE-A -m comment --comment \"x\nCOMMIT\n").line,
            2
        );
        assert_eq!(err("*filter\n-X KUBE-A extra\nCOMMIT\n").line, 2);
        assert_eq!(
            err("*filter\n-N KUBE-THIS-NAME-IS-FAR-TOO-LONG-FOR-IPTABLES\nCOMMIT\n").line,
            2
        );
        assert_eq!(err("-A KUBE-A -j DROP\n").line, 1);
        assert_eq!(err("*filter\n*nat\nCOMMIT\n").line, 2);
        assert!(parse_restore("").unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(text in "\\PC{0,200}") {
            let _ = tokenize(&text);
            let _ = same_rule(&text, &text);
            let _ = parse_save(&text);
            let _ = parse_restore(&text);
        }

        #[test]
        fn structured_garbage_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("*filter".to_string()),
                    Just("*nat".to_string()),
                    Just("*raw".to_string()),
                    Just("COMMIT".to_string()),
                    Just("-S".to_string()),
                    "[:*\\-][A-Z]{0,3}[ \"\\\\\\[\\]0-9:A-Za-z-]{0,30}",
                    "-[ADINFXS] [A-Z-]{0,8}( [0-9]{0,3})?( -j [A-Z]{0,5})?",
                ],
                0..12,
            )
        ) {
            let text = lines.join("\n");
            let _ = parse_save(&text);
            let _ = parse_restore(&text);
        }
    }
}
