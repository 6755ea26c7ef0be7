//! The names of the kernel's reset reasons (`enum sk_rst_reason`, Linux 6.10+): its names and
//! their numbers differ from one kernel version to the next, so they are taken from the kernel
//! that sent the resets (its `tcp_send_reset` format, or the recording's header).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Reset reason number → the kernel's name for it (`TCP_ABORT_ON_CLOSE`); empty when unknown
/// (a kernel without reasons, a recording made before they were recorded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResetReasons(BTreeMap<u32, String>);

impl ResetReasons {
    /// The kernel's name of `reason`, when known. A name is an identifier: anything else (a
    /// damaged or crafted recording) is no name, so it can be printed as it is anywhere.
    pub fn name(&self, reason: u32) -> Option<&str> {
        self.0
            .get(&reason)
            .map(String::as_str)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    }

    /// No name is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(u32, String)> for ResetReasons {
    fn from_iter<I: IntoIterator<Item = (u32, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers_or_nothing() {
        let r: ResetReasons = [
            (11, "TCP_ABORT_ON_CLOSE".to_string()),
            (12, "\x1b[2J".to_string()),
            (13, String::new()),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.name(11), Some("TCP_ABORT_ON_CLOSE"));
        assert_eq!(r.name(12), None);
        assert_eq!(r.name(13), None);
        assert_eq!(r.name(14), None);
        // In a recording's header: a JSON object by number.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"11":"TCP_ABORT_ON_CLOSE","#), "{json}");
        assert_eq!(serde_json::from_str::<ResetReasons>(&json).unwrap(), r);
    }
}
