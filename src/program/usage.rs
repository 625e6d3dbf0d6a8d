//! Token usage and cost of LM calls, as the bridge reports them per request
//! (`{"<model>": {"prompt_tokens", "completion_tokens", "total_tokens", "cost", "calls"}}`),
//! and their sums.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One model's calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// In USD, when the provider's price is known for every call counted; else `None`.
    pub cost: Option<f64>,
    pub calls: u64,
}

impl TokenUsage {
    fn from_wire(value: &Value) -> Self {
        let count = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
        TokenUsage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            total_tokens: count("total_tokens"),
            cost: value.get("cost").and_then(Value::as_f64),
            calls: count("calls"),
        }
    }

    /// Adds `other`; the cost stays known only if both were.
    pub fn add(&mut self, other: &TokenUsage) {
        let known = self.calls == 0 || self.cost.is_some();
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost = match (known, self.cost, other.cost) {
            (true, mine, Some(theirs)) => Some(mine.unwrap_or(0.0) + theirs),
            _ if other.calls == 0 => self.cost,
            _ => None,
        };
        self.calls += other.calls;
    }
}

/// Usage per model.
///
/// # Examples
///
/// ```
/// use dspex::Usage;
/// let mut total = Usage::default();
/// let row = serde_json::json!({"dummy": {"prompt_tokens": 10, "completion_tokens": 4,
///                                         "total_tokens": 14, "cost": null, "calls": 1}});
/// total.add(&Usage::from_wire(Some(&row)));
/// total.add(&Usage::from_wire(Some(&row)));
/// assert_eq!(total.total().total_tokens, 28);
/// assert_eq!(total.total().calls, 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Usage(pub BTreeMap<String, TokenUsage>);

impl Usage {
    /// Reads a request's `usage`; anything malformed counts as no usage.
    pub fn from_wire(value: Option<&Value>) -> Self {
        let Some(Value::Object(models)) = value else {
            return Usage::default();
        };
        Usage(
            models
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(model, v)| (model.clone(), TokenUsage::from_wire(v)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn add(&mut self, other: &Usage) {
        for (model, usage) in &other.0 {
            self.0.entry(model.clone()).or_default().add(usage);
        }
    }

    /// The sum over models.
    pub fn total(&self) -> TokenUsage {
        let mut total = TokenUsage::default();
        for usage in self.0.values() {
            total.add(usage);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(cost: Option<f64>) -> TokenUsage {
        TokenUsage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            cost,
            calls: 1,
        }
    }

    #[test]
    fn cost_is_summed_while_every_call_has_one() {
        let mut t = TokenUsage::default();
        t.add(&one(Some(0.5)));
        t.add(&one(Some(0.25)));
        assert_eq!(t.cost, Some(0.75));
        t.add(&one(None));
        assert_eq!(t.cost, None, "one unknown price makes the sum unknown");
        t.add(&one(Some(1.0)));
        assert_eq!(t.cost, None);
        assert_eq!((t.calls, t.total_tokens), (4, 20));
    }

    #[test]
    fn usage_adds_per_model_and_totals_across_models() {
        let mut u = Usage::default();
        u.add(&Usage::from_wire(Some(&json!({
            "a": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "calls": 1, "cost": 0.1},
            "b": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "calls": 2, "cost": null},
        }))));
        u.add(&Usage::from_wire(Some(&json!({
            "a": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "calls": 1, "cost": 0.1},
        }))));
        assert_eq!(u.0["a"].total_tokens, 4);
        assert_eq!(u.0["a"].cost, Some(0.2));
        assert_eq!(u.total().total_tokens, 14);
        assert_eq!(u.total().cost, None);
        assert!(Usage::from_wire(Some(&json!("junk"))).is_empty());
        assert!(Usage::from_wire(None).is_empty());
    }
}
