//! Which events are stored raw. Every event feeds the windows and the alert detectors; the filter only
//! decides whether its row goes into `log_events`.
//!
//! Rules, in this order:
//! 1. a service in `exclude_services`, or outside a non-empty `include_services`: not stored;
//! 2. a message matching one of `drop_messages`: not stored;
//! 3. an attribute in `match_attributes` that is missing or different: not stored;
//! 4. level at or above `min_level`: stored; below it, stored only when the message matches one of
//!    `keep_messages` (a way to keep, say, every "payment" line while storing only WARN and up).
//!
//! The rules can be swapped at run time ([`FilterHandle::reload`], on SIGHUP or
//! `POST /admin/filters/reload`); a file that does not parse leaves the old rules in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use logpipe_common::{Level, RawEvent};
use regex::RegexSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterRules {
    pub min_level: Level,
    pub include_services: Vec<String>,
    pub exclude_services: Vec<String>,
    pub drop_messages: Vec<String>,
    pub keep_messages: Vec<String>,
    /// Attribute name → required value (compared as text, so `"500"` matches the number 500).
    pub match_attributes: BTreeMap<String, String>,
}

impl Default for FilterRules {
    fn default() -> Self {
        Self {
            min_level: Level::Trace,
            include_services: Vec::new(),
            exclude_services: Vec::new(),
            drop_messages: Vec::new(),
            keep_messages: Vec::new(),
            match_attributes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid regex in {field}: {source}")]
    Regex {
        field: &'static str,
        #[source]
        source: regex::Error,
    },
    #[error("cannot read filter file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid filter file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("no filter file configured (set filter_file to reload rules at run time)")]
    NoFile,
}

/// Compiled rules.
#[derive(Debug)]
pub struct Filter {
    rules: FilterRules,
    drop: RegexSet,
    keep: RegexSet,
    /// True when no rule can refuse an event: skips all work per event.
    pass_all: bool,
}

impl Filter {
    pub fn new(rules: FilterRules) -> Result<Filter, FilterError> {
        let drop = RegexSet::new(&rules.drop_messages).map_err(|source| FilterError::Regex {
            field: "drop_messages",
            source,
        })?;
        let keep = RegexSet::new(&rules.keep_messages).map_err(|source| FilterError::Regex {
            field: "keep_messages",
            source,
        })?;
        let pass_all = rules.min_level == Level::Trace
            && rules.include_services.is_empty()
            && rules.exclude_services.is_empty()
            && rules.drop_messages.is_empty()
            && rules.match_attributes.is_empty();
        Ok(Filter {
            rules,
            drop,
            keep,
            pass_all,
        })
    }

    pub fn rules(&self) -> &FilterRules {
        &self.rules
    }

    /// Whether the event is stored raw.
    pub fn stores(&self, e: &RawEvent) -> bool {
        if self.pass_all {
            return true;
        }
        let r = &self.rules;
        let service = e.service();
        if r.exclude_services.iter().any(|s| s == service)
            || (!r.include_services.is_empty() && !r.include_services.iter().any(|s| s == service))
        {
            return false;
        }
        if !self.drop.is_empty() && self.drop.is_match(e.message()) {
            return false;
        }
        let attrs_match = r.match_attributes.iter().all(|(k, want)| {
            e.attribute(k).is_some_and(|v| match v.as_str() {
                Some(s) => s == want.as_str(),
                // Numbers and booleans compare by their JSON text, as serde_json writes it.
                None => *want == v.to_json_string(),
            })
        });
        if !attrs_match {
            return false;
        }
        e.level() >= r.min_level || (!self.keep.is_empty() && self.keep.is_match(e.message()))
    }
}

/// The current rules, shared by the consume loop and the admin endpoint.
#[derive(Debug, Clone)]
pub struct FilterHandle {
    current: Arc<RwLock<Arc<Filter>>>,
    file: Option<PathBuf>,
}

impl FilterHandle {
    /// Rules from `file` when given, else `inline`.
    pub fn new(inline: FilterRules, file: Option<PathBuf>) -> Result<FilterHandle, FilterError> {
        let rules = match &file {
            Some(path) => read_rules(path)?,
            None => inline,
        };
        Ok(FilterHandle {
            current: Arc::new(RwLock::new(Arc::new(Filter::new(rules)?))),
            file,
        })
    }

    pub fn current(&self) -> Arc<Filter> {
        self.current.read().expect("filter lock").clone()
    }

    /// Re-read the filter file; on any error the old rules stay.
    pub fn reload(&self) -> Result<FilterRules, FilterError> {
        let path = self.file.as_ref().ok_or(FilterError::NoFile)?;
        let filter = Filter::new(read_rules(path)?)?;
        let rules = filter.rules.clone();
        *self.current.write().expect("filter lock") = Arc::new(filter);
        tracing::info!(?rules, "filter rules reloaded");
        Ok(rules)
    }
}

fn read_rules(path: &Path) -> Result<FilterRules, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| FilterError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(level: Level, service: &str, message: &str) -> RawEvent {
        let event = logpipe_common::LogEvent {
            event_id: "1".into(),
            timestamp: chrono::Utc::now(),
            level,
            service: service.into(),
            component: String::new(),
            host: String::new(),
            message: message.into(),
            trace_id: None,
            span_id: None,
            attributes: serde_json::json!({"http.status": 500, "region": "eu"})
                .as_object()
                .unwrap()
                .clone(),
        };
        RawEvent::from_event(&event).unwrap()
    }

    #[test]
    fn default_rules_store_everything() {
        let f = Filter::new(FilterRules::default()).unwrap();
        assert!(f.stores(&event(Level::Trace, "a", "x")));
    }

    #[test]
    fn min_level_drops_below_unless_a_keep_pattern_matches() {
        let f = Filter::new(FilterRules {
            min_level: Level::Warn,
            keep_messages: vec!["(?i)payment".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(f.stores(&event(Level::Error, "a", "boom")));
        assert!(!f.stores(&event(Level::Info, "a", "ok")));
        assert!(f.stores(&event(Level::Info, "a", "Payment accepted")));
    }

    #[test]
    fn services_drop_patterns_and_attributes_refuse_events() {
        let f = Filter::new(FilterRules {
            include_services: vec!["a".into(), "b".into()],
            exclude_services: vec!["b".into()],
            drop_messages: vec!["^healthcheck".into()],
            match_attributes: [("http.status".to_string(), "500".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        assert!(f.stores(&event(Level::Info, "a", "x")));
        assert!(!f.stores(&event(Level::Info, "b", "x")));
        assert!(!f.stores(&event(Level::Info, "c", "x")));
        assert!(!f.stores(&event(Level::Info, "a", "healthcheck ok")));
        let f = Filter::new(FilterRules {
            match_attributes: [("region".to_string(), "us".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        assert!(!f.stores(&event(Level::Info, "a", "x")));
    }

    #[test]
    fn a_bad_regex_is_refused_naming_the_field() {
        let err = Filter::new(FilterRules {
            drop_messages: vec!["(".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("drop_messages"), "{err}");
    }

    #[test]
    fn reload_swaps_rules_and_keeps_the_old_ones_when_the_file_is_bad() {
        let dir = std::env::temp_dir().join(format!("logpipe-filter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("filter.toml");
        std::fs::write(&path, "min_level = \"WARN\"\n").unwrap();
        let h = FilterHandle::new(FilterRules::default(), Some(path.clone())).unwrap();
        assert!(!h.current().stores(&event(Level::Info, "a", "x")));
        std::fs::write(&path, "min_level = \"INFO\"\n").unwrap();
        h.reload().unwrap();
        assert!(h.current().stores(&event(Level::Info, "a", "x")));
        std::fs::write(&path, "min_level = \"LOUD\"\n").unwrap();
        assert!(h.reload().is_err());
        assert!(h.current().stores(&event(Level::Info, "a", "x")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
