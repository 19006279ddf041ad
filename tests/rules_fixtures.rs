//! Rules fixtures as data: every `tests/fixtures/rules/*.yaml` is a table
//! of events and the notifications they must produce.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use herald::event::{Event, Meta, SourceKind};
use herald::rules::Rules;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    rules_file: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "http")]
    source: SourceKind,
    #[serde(default = "test_topic")]
    topic: String,
    event: Value,
    expect: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    failures: Vec<(String, String)>,
}

fn http() -> SourceKind {
    SourceKind::Http
}

fn test_topic() -> String {
    "test".into()
}

#[test]
fn every_fixture_produces_its_expected_notifications() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests/fixtures/rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "fixtures found: {files:?}");
    let mut cases = 0;
    for file in files {
        let fixture: Fixture =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let rules = if fixture.rules_file == "builtin" {
            Rules::builtin()
        } else {
            Rules::load(&root.join(&fixture.rules_file))
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        };
        for case in fixture.cases {
            let at = format!("{} / {}", file.display(), case.name);
            let event = Event {
                payload: case.event,
                meta: Meta::new(case.source, case.topic, "fixture:0"),
            };
            let out = rules.evaluate(&event);
            let failures: Vec<_> = out
                .failures
                .iter()
                .map(|f| (f.rule.to_string(), f.field.clone()))
                .collect();
            assert_eq!(failures, case.failures, "{at}: rule failures");
            assert_eq!(
                out.notifications.len(),
                case.expect.len(),
                "{at}: notifications {:#?}",
                out.notifications
            );
            for (got, want) in out.notifications.iter().zip(&case.expect) {
                let got = serde_json::to_value(got).unwrap();
                for (field, value) in want {
                    assert_eq!(&got[field], value, "{at}: field `{field}` of {got}");
                }
            }
            cases += 1;
        }
    }
    assert!(cases >= 10);
}
