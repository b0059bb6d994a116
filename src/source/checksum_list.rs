//! Checksum lists (`SHA256SUMS`, `*.sha512`, BSD `SHA256 (file) = hex`): finding one file's digest.

use crate::checksum::{Algorithm, Checksum};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("`{file}` is not listed in the checksum list")]
    NotListed { file: String },
    #[error("the checksum list has a malformed entry for `{file}`: {why}")]
    Malformed { file: String, why: String },
}

/// The digest of `file` in `text`. A list with a single bare digest (a `.sha256` file holding
/// only the hex) applies to any file.
pub fn find(text: &str, file: &str) -> Result<Checksum, ListError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for line in &lines {
        // BSD style: `SHA256 (name) = hex`
        if let Some(rest) = line
            .strip_prefix("SHA256 (")
            .or_else(|| line.strip_prefix("SHA512 ("))
        {
            if let Some((name, hex)) = rest.split_once(") = ") {
                if basename(name) == file {
                    return parse_hex(hex.trim(), file);
                }
            }
            continue;
        }
        // GNU style: `hex  name` or `hex *name`
        let mut parts = line.splitn(2, char::is_whitespace);
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.trim_start().trim_start_matches('*');
        if basename(name) == file {
            return parse_hex(hex, file);
        }
    }
    if let [only] = lines.as_slice() {
        if !only.contains(char::is_whitespace) {
            return parse_hex(only, file);
        }
    }
    Err(ListError::NotListed {
        file: file.to_string(),
    })
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parse_hex(hex: &str, file: &str) -> Result<Checksum, ListError> {
    let algorithm = match hex.len() {
        64 => Algorithm::Sha256,
        128 => Algorithm::Sha512,
        n => {
            return Err(ListError::Malformed {
                file: file.to_string(),
                why: format!("a digest of {n} hex digits is neither sha256 nor sha512"),
            })
        }
    };
    Checksum::new(algorithm, hex).map_err(|e| ListError::Malformed {
        file: file.to_string(),
        why: e.to_string(),
    })
}

/// The file name a URL points at, for looking it up in a list.
pub fn file_name_of(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gnu_bsd_and_bare_entries() {
        let a = Checksum::sha256(b"a");
        let b = Checksum::of_bytes(Algorithm::Sha512, b"b");
        let list = format!(
            "{}  other.iso\n{} *talos.raw.xz\n",
            Checksum::sha256(b"x").hex(),
            a.hex()
        );
        assert_eq!(find(&list, "talos.raw.xz").unwrap(), a);
        let bsd = format!("SHA512 (dir/h.iso) = {}\n", b.hex());
        assert_eq!(find(&bsd, "h.iso").unwrap(), b);
        assert_eq!(find(&format!("{}\n", a.hex()), "anything").unwrap(), a);
        assert!(matches!(
            find(&list, "nope"),
            Err(ListError::NotListed { .. })
        ));
        assert!(matches!(
            find("abc  f\n", "f"),
            Err(ListError::Malformed { .. })
        ));
    }

    #[test]
    fn file_names_of_urls() {
        assert_eq!(file_name_of("https://h/a/b.iso?x=1"), "b.iso");
    }
}
