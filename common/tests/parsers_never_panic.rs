//! Every parser of outside input returns an error, never panics: the corpus in `corpus/lines.txt`
//! (valid lines and lines that once broke a parser), each line cut and spliced at every character
//! position, and property tests over arbitrary text shaped like each format.

use chrono::{DateTime, Utc};
use logpipe_common::event::LogEvent;
use logpipe_common::formats::{parse_apache, parse_line, parse_syslog, LineContext};
use proptest::prelude::*;

fn ctx() -> LineContext<'static> {
    LineContext {
        event_id: "01TEST".into(),
        default_service: "web",
        received_at: "2026-11-23T10:00:00Z".parse::<DateTime<Utc>>().unwrap(),
    }
}

/// Every parser on one input; what a successful parse returns must itself be a valid event.
fn all_parsers(line: &str) {
    let c = ctx();
    if let Ok(event) = parse_line(line, &c) {
        event.validate().unwrap();
    }
    let _ = parse_syslog(line, &c);
    let _ = parse_apache(line, &c);
    if let Ok(event) = LogEvent::from_json(line.as_bytes()) {
        event.validate().unwrap();
    }
}

fn corpus() -> Vec<String> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/lines.txt"
    ))
    .expect("corpus");
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"# "))
        .map(|l| String::from_utf8(l.to_vec()).expect("corpus lines are UTF-8"))
        .collect()
}

/// Characters that break byte-indexed parsers: multibyte ones of each width, and delimiters.
const SPLICES: [&str; 9] = ["é", "€", "😀", "\u{0}", "\"", "[", "]", " ", ":"];

#[test]
fn every_corpus_line_cut_or_spliced_at_any_character_is_parsed_without_panic() {
    let lines = corpus();
    assert!(
        lines.len() >= 30,
        "the corpus went missing: {}",
        lines.len()
    );
    let mut inputs = 0usize;
    for line in &lines {
        all_parsers(line);
        for (i, _) in line.char_indices().chain([(line.len(), ' ')]) {
            all_parsers(&line[..i]);
            for s in SPLICES {
                let spliced = format!("{}{s}{}", &line[..i], &line[i..]);
                all_parsers(&spliced);
                // And replacing the character there.
                let after = line[i..].chars().next().map_or(i, |c| i + c.len_utf8());
                all_parsers(&format!("{}{s}{}", &line[..i], &line[after..]));
                inputs += 2;
            }
        }
    }
    assert!(inputs > 10_000, "{inputs}");
}

#[test]
fn the_corpus_still_holds_lines_that_parse() {
    let c = ctx();
    let ok = corpus()
        .iter()
        .filter(|l| parse_line(l, &c).is_ok())
        .count();
    assert!(ok >= 5, "the valid seeds stopped parsing: {ok}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics_a_parser(line in "\\PC{0,200}") {
        all_parsers(&line);
    }

    #[test]
    fn text_shaped_like_rfc3164_never_panics(
        pri in 0u16..300,
        rest in "[A-Za-z]{0,3} [ 0-9]{0,2} [0-9:éß€]{0,8} \\PC{0,40}",
    ) {
        all_parsers(&format!("<{pri}>{rest}"));
    }

    #[test]
    fn text_shaped_like_rfc5424_never_panics(
        pri in 0u16..300,
        ts in "[-0-9T:.Z+é]{0,30}",
        sd in "(-|\\[[a-zé@0-9]{0,6}( [a-z]{0,3}=\"[^\"]{0,5}\"?){0,3}\\]?){0,2}",
        msg in "\\PC{0,40}",
    ) {
        all_parsers(&format!("<{pri}>1 {ts} host app - - {sd} {msg}"));
    }

    #[test]
    fn text_shaped_like_apache_never_panics(
        ip in "[0-9.:a-fé]{0,15}",
        date in "[0-9A-Za-z/: +é]{0,30}",
        request in "[^\"]{0,30}\"?",
        tail in "[0-9 \\-é]{0,20}\\PC{0,20}",
    ) {
        all_parsers(&format!("{ip} - - [{date}] \"{request}\" {tail}"));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_json_event_parser(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = LogEvent::from_json(&bytes);
    }

    #[test]
    fn json_events_with_arbitrary_field_values_never_panic(
        ts in "\\PC{0,30}",
        level in "\\PC{0,8}",
        message in "\\PC{0,40}",
        attr in "\\PC{0,20}",
    ) {
        let json = serde_json::json!({
            "timestamp": ts, "level": level, "service": "s", "message": message,
            "attributes": {"a": [{"b": attr}]},
        });
        if let Ok(event) = LogEvent::from_json(json.to_string().as_bytes()) {
            event.validate().unwrap();
        }
    }
}
