//! Package versions: dotted numbers with an optional leading `v` and `-prerelease`, compared
//! numerically (`1.10` > `1.9`, `v1.2` == `1.2.0`, `2.0-rc1` < `2.0`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed version that remembers how it was written (shown and serialized as the original).
#[derive(Clone, Debug)]
pub struct Version {
    original: String,
    numbers: Vec<u64>,
    pre: Option<String>,
}

/// A string that is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version (expected dotted numbers like 2, 1.10 or v1.2.3-rc1)")]
pub struct VersionError(pub String);

impl Version {
    /// The numeric components as written (`1.2` gives `[1, 2]`).
    pub fn numbers(&self) -> &[u64] {
        &self.numbers
    }

    /// The pre-release label after `-`, if any.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError(s.to_owned());
        let body = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => {
                let valid = !pre.is_empty()
                    && pre.split('.').all(|p| !p.is_empty())
                    && pre.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !valid {
                    return Err(err());
                }
                (core, Some(pre.to_owned()))
            }
            None => (body, None),
        };
        let numbers = core
            .split('.')
            .map(|n| {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                n.parse::<u64>().map_err(|_| err())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Version { original: s.to_owned(), numbers, pre })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(&self.numbers, i).cmp(&at(&other.numbers, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                // A pre-release comes before its release.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => natural_cmp(a, b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.original)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Compares runs of digits numerically and everything else byte-wise, so `rc2` < `rc10`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (da, ra) = split_digits(a);
                let (db, rb) = split_digits(b);
                let (da, db) = (trim_zeros(da), trim_zeros(db));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o.is_ne() {
                    return o;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn rejects_non_versions() {
        for bad in ["", "v", "1.", ".1", "1..2", "a", "1.x", "1-", "1-rc..1", "1 2", "1+b", "-1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn prerelease_labels_compare_naturally() {
        assert!(v("2.0-rc2") < v("2.0-rc10"));
        assert!(v("2.0-alpha") < v("2.0-beta"));
        assert_eq!(v("2.0-rc01"), v("2.0-rc1"));
    }
}
