//! Names users choose that become keys and folder names: one rule, shared by the task files
//! (TOML bare keys) and `aiop eval`'s ensemble members (folders of `--pretrained`).
//!
//! Invariant: a name that passes [`bare_key`] is never `.` or `..` and holds no path
//! separator, so it can name a folder under a directory without escaping it.

/// A TOML bare key: one or more of A-Z a-z 0-9 _ -. Also the rule for a plain folder name.
pub fn bare_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::bare_key;

    #[test]
    fn bare_keys_are_plain_folder_names() {
        for ok in ["a", "aio-s1", "plain_2", "X9"] {
            assert!(bare_key(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a.b", "a b", "é"] {
            assert!(!bare_key(bad), "{bad:?}");
        }
    }
}
