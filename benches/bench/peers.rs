//! Peers' numbers from the JSON `scripts/compare.py` writes (`--peers FILE.json`).
//!
//! Layout (only the fields read here; the script writes more):
//!
//! ```json
//! { "peers": ["sdpa-flash", "sdpa-cudnn", "sage-1.0.6"],
//!   "cases": [ { "head_dim": 128, "causal": false, "seq_len": 4096,
//!                "batch": 4, "heads": 32, "kv_heads": 32,
//!                "results": { "sdpa-flash": { "median_ms": 1.9, "tops": 570.2 },
//!                             "sdpa-cudnn": { "error": "No available kernel" } } } ] }
//! ```

use serde_json::Value;
use std::collections::HashMap;

/// One peer's result for one case.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerValue {
    /// TOPS at the median time.
    Tops(f64),
    /// The peer failed on this case (the message).
    Failed(String),
}

/// Case key: head_dim, causal, seq_len, batch, heads, kv_heads.
pub type CaseKey = (usize, bool, usize, usize, usize, usize);

/// All peers' results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Peers {
    /// Peer names in the order of the JSON's `peers` list (else of first appearance).
    pub names: Vec<String>,
    /// Results per case and peer name.
    pub cases: HashMap<CaseKey, HashMap<String, PeerValue>>,
}

impl Peers {
    /// The result of peer `name` for the case `key` (see `CaseJson::key`), if the peers file
    /// has it.
    pub fn get(&self, key: CaseKey, name: &str) -> Option<&PeerValue> {
        self.cases.get(&key)?.get(name)
    }
}

fn field_usize(v: &Value, name: &str) -> Result<usize, String> {
    v.get(name)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| format!("case without a non-negative integer `{name}`: {v}"))
}

/// Parses the peers JSON text.
pub fn parse_peers(text: &str) -> Result<Peers, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut names: Vec<String> = root
        .get("peers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let cases_v = root
        .get("cases")
        .and_then(Value::as_array)
        .ok_or("no `cases` array")?;
    let mut cases = HashMap::new();
    for c in cases_v {
        let head_dim = field_usize(c, "head_dim")?;
        let seq_len = field_usize(c, "seq_len")?;
        let batch = field_usize(c, "batch")?;
        let heads = field_usize(c, "heads")?;
        let kv_heads = c
            .get("kv_heads")
            .and_then(Value::as_u64)
            .map_or(heads, |x| x as usize);
        let causal = c
            .get("causal")
            .and_then(Value::as_bool)
            .ok_or_else(|| format!("case without a boolean `causal`: {c}"))?;
        let mut per = HashMap::new();
        if let Some(results) = c.get("results").and_then(Value::as_object) {
            for (name, r) in results {
                if !names.contains(name) {
                    names.push(name.clone());
                }
                let value = match (r.get("tops").and_then(Value::as_f64), r.get("error")) {
                    (Some(t), _) => PeerValue::Tops(t),
                    (None, Some(e)) => {
                        PeerValue::Failed(e.as_str().map_or_else(|| e.to_string(), String::from))
                    }
                    (None, None) => PeerValue::Failed("no result".into()),
                };
                per.insert(name.clone(), value);
            }
        }
        cases.insert((head_dim, causal, seq_len, batch, heads, kv_heads), per);
    }
    Ok(Peers { names, cases })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const FAKE_PEERS: &str = r#"{
      "tool": "sageattention-compare", "version": 1,
      "peers": ["sdpa-flash", "sdpa-cudnn", "sage-1.0.6"],
      "cases": [
        {"head_dim": 64, "causal": false, "seq_len": 1024, "batch": 4, "heads": 32, "kv_heads": 32,
         "results": {"sdpa-flash": {"median_ms": 0.2, "tops": 171.8},
                     "sdpa-cudnn": {"error": "No available kernel.\nAborting"},
                     "sage-1.0.6": {"median_ms": 0.15, "tops": 229.0}}},
        {"head_dim": 128, "causal": true, "seq_len": 4096, "batch": 4, "heads": 32,
         "results": {"sdpa-flash": {"tops": 400.5}, "extra-peer": {"tops": 1.0}}}
      ]}"#;

    #[test]
    fn parses_values_failures_and_order() {
        let p = parse_peers(FAKE_PEERS).unwrap();
        assert_eq!(
            p.names,
            ["sdpa-flash", "sdpa-cudnn", "sage-1.0.6", "extra-peer"]
        );
        let c = &p.cases[&(64, false, 1024, 4, 32, 32)];
        assert_eq!(c["sdpa-flash"], PeerValue::Tops(171.8));
        assert!(matches!(&c["sdpa-cudnn"], PeerValue::Failed(m) if m.starts_with("No available")));
        // kv_heads defaults to heads
        let c = &p.cases[&(128, true, 4096, 4, 32, 32)];
        assert_eq!(c["sdpa-flash"], PeerValue::Tops(400.5));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_peers("[").is_err());
        assert!(parse_peers("{}").is_err());
        assert!(parse_peers(r#"{"cases":[{"head_dim":64}]}"#).is_err());
    }
}
