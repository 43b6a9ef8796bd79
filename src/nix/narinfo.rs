//! The `.narinfo` text format: `Key: value` lines.
//!
//! Parsing keeps unknown fields so `parse -> render` round-trips a narinfo written
//! by Nix byte for byte.
//!
//! Format, as Nix 2.8 writes it (every line ends with `\n`, keys in this order):
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<file hash nix32>.nar.zst
//! Compression: zstd
//! FileHash: sha256:<nix32>
//! FileSize: 123
//! NarHash: sha256:<nix32>
//! NarSize: 456
//! References: <basename> <basename>     (the value may be empty: "References: ")
//! Deriver: <hash>-<name>.drv            (optional)
//! Sig: <key name>:<base64>              (zero or more)
//! CA: fixed:r:sha256:<nix32>            (optional)
//! ```
//!
//! Decisions where Nix leaves room, each pinned by a test named after it:
//! - Lines end with `\n` only. A `\r` anywhere is rejected: Nix would read it as
//!   part of the value and fail on `NarSize: 456\r` anyway.
//! - The text must end with `\n`, as in Nix. A missing final newline is rejected
//!   because it is the mark of a truncated upload (a cut `Sig:` line would
//!   otherwise be stored as a shorter, bogus signature).
//! - Every line is `Key: value`; blank lines are rejected. Keys are non-empty and
//!   contain no `:`, whitespace or control characters.
//! - Known fields may come in any order; render writes Nix's order. Unknown fields
//!   are kept in their order and written after the known ones, so round-trips are
//!   exact for what Nix writes (Nix writes no unknown fields, and newer Nix puts
//!   its newer fields last).
//! - Single-valued known fields may appear once; `Sig` may repeat. Unknown fields
//!   may repeat. Known fields other than `References` must not be empty.
//! - `Compression` absent is kept as `None` (Nix reads it as bzip2) and rendered
//!   absent.
//! - `NarSize` must be a positive integer (Nix rejects 0); sizes are plain decimal
//!   digits (no sign, no spaces).
//! - `References` are split on spaces (runs of spaces count as one separator) and
//!   each must be a store path basename. `Deriver: unknown-deriver` (written by old
//!   Nix) parses as no deriver, as in Nix.
//! - Hashes may be in any spelling [`Sha256::parse`] accepts; render writes
//!   `sha256:<nix32>`.
//!
//! Not here: checking that `StorePath` is in the cache's store dir, or that the
//! NAR matches `NarHash` (callers know the store dir and hold the bytes).

use super::hash::Sha256;
use super::signing::{self, PublicKey, SecretKey};
use super::store_path::{validate_store_dir, StorePath};
use super::Error;

/// The keys this module gives meaning to. Anything else is kept in `extra`.
const KNOWN_KEYS: [&str; 11] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "Sig",
    "CA",
];

/// What old Nix versions wrote when a path had no known deriver.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// A parsed narinfo. References and Deriver are basenames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path.
    pub store_path: String,
    pub url: String,
    /// `None` when the line is absent (Nix then means bzip2).
    pub compression: Option<String>,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    /// Basenames, in the order given.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    /// Raw `name:base64` strings.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// Unknown `(key, value)` lines, kept in order after the known ones.
    pub extra: Vec<(String, String)>,
}

/// Whether `key` is a field name this module knows.
pub fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.contains(&key)
}

/// A narinfo error at a 1-based line number.
fn line_err(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::NarInfo(format!("line {line}: {msg}"))
}

/// Store a single-valued field, rejecting a second occurrence.
fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, line: usize) -> Result<(), Error> {
    if slot.is_some() {
        return Err(line_err(line, format!("{key} appears more than once")));
    }
    *slot = Some(value);
    Ok(())
}

/// Parse a size: decimal digits only.
fn parse_size(value: &str, key: &str, line: usize) -> Result<u64, Error> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(line_err(
            line,
            format!("{key} {value:?} is not a decimal number"),
        ));
    }
    value
        .parse()
        .map_err(|_| line_err(line, format!("{key} {value:?} is too large")))
}

/// Split a full store path into its store dir and validated [`StorePath`].
fn split_full_path(full: &str) -> Result<(&str, StorePath), Error> {
    let (dir, base) = full
        .rsplit_once('/')
        .ok_or_else(|| Error::StorePath(format!("{full:?} is not a full store path")))?;
    validate_store_dir(dir)?;
    Ok((dir, StorePath::from_basename(base)?))
}

impl NarInfo {
    /// Parse narinfo text. Required: StorePath, URL, NarHash, NarSize. Rejects
    /// lines without `: `, duplicate single-valued keys, bad hashes and sizes,
    /// and References/Deriver entries that are not store path basenames.
    ///
    /// See the module documentation for the exact rules (line endings, empty
    /// values, unknown fields).
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() {
            return Err(Error::NarInfo("the narinfo is empty".into()));
        }
        if text.contains('\r') {
            return Err(Error::NarInfo(
                "carriage return found: lines must end with \\n alone".into(),
            ));
        }
        let body = text.strip_suffix('\n').ok_or_else(|| {
            Error::NarInfo("the last line does not end with \\n (truncated?)".into())
        })?;

        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut seen_deriver = false;
        let mut sigs = Vec::new();
        let mut ca = None;
        let mut extra = Vec::new();

        for (index, line_text) in body.split('\n').enumerate() {
            let line = index + 1;
            let (key, value) = line_text.split_once(": ").ok_or_else(|| {
                line_err(line, format!("{line_text:?} is not a `Key: value` line"))
            })?;
            if key.is_empty() {
                return Err(line_err(line, "the key is empty"));
            }
            if let Some(c) = key
                .chars()
                .find(|&c| c == ':' || c.is_whitespace() || c.is_control())
            {
                return Err(line_err(line, format!("key {key:?} contains {c:?}")));
            }
            if is_known_key(key) && key != "References" && value.is_empty() {
                return Err(line_err(line, format!("{key} is empty")));
            }
            match key {
                "StorePath" => {
                    split_full_path(value).map_err(|e| line_err(line, e))?;
                    set_once(&mut store_path, value.to_string(), key, line)?;
                }
                "URL" => set_once(&mut url, value.to_string(), key, line)?,
                "Compression" => set_once(&mut compression, value.to_string(), key, line)?,
                "FileHash" => {
                    let h = Sha256::parse(value).map_err(|e| line_err(line, e))?;
                    set_once(&mut file_hash, h, key, line)?;
                }
                "FileSize" => set_once(&mut file_size, parse_size(value, key, line)?, key, line)?,
                "NarHash" => {
                    let h = Sha256::parse(value).map_err(|e| line_err(line, e))?;
                    set_once(&mut nar_hash, h, key, line)?;
                }
                "NarSize" => {
                    let n = parse_size(value, key, line)?;
                    if n == 0 {
                        return Err(line_err(line, "NarSize is 0"));
                    }
                    set_once(&mut nar_size, n, key, line)?;
                }
                "References" => {
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            StorePath::from_basename(r)
                                .map(|_| r.to_string())
                                .map_err(|e| line_err(line, format!("reference: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    set_once(&mut references, refs, key, line)?;
                }
                "Deriver" => {
                    if seen_deriver {
                        return Err(line_err(line, "Deriver appears more than once"));
                    }
                    seen_deriver = true;
                    if value != UNKNOWN_DERIVER {
                        StorePath::from_basename(value)
                            .map_err(|e| line_err(line, format!("Deriver: {e}")))?;
                        deriver = Some(value.to_string());
                    }
                }
                "Sig" => sigs.push(value.to_string()),
                "CA" => set_once(&mut ca, value.to_string(), key, line)?,
                _ => extra.push((key.to_string(), value.to_string())),
            }
        }

        let missing = |key: &str| Error::NarInfo(format!("required field {key} is missing"));
        Ok(NarInfo {
            store_path: store_path.ok_or_else(|| missing("StorePath"))?,
            url: url.ok_or_else(|| missing("URL"))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: nar_size.ok_or_else(|| missing("NarSize"))?,
            references: references.unwrap_or_default(),
            deriver,
            sigs,
            ca,
            extra,
        })
    }

    /// Render in Nix's order: StorePath, URL, Compression, FileHash, FileSize,
    /// NarHash, NarSize, References, Deriver, Sig..., CA, then extras. Hashes are
    /// written as `sha256:<nix32>`. `References:` is always written, possibly empty.
    ///
    /// Values are written as they are. A value holding `\n` or `\r`, an empty
    /// known value, or an `extra` key that is a known key makes text that does
    /// not parse back; values from [`NarInfo::parse`] never do.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        line("StorePath", &self.store_path);
        line("URL", &self.url);
        if let Some(c) = &self.compression {
            line("Compression", c);
        }
        if let Some(h) = &self.file_hash {
            line("FileHash", &h.to_nix_string());
        }
        if let Some(n) = self.file_size {
            line("FileSize", &n.to_string());
        }
        line("NarHash", &self.nar_hash.to_nix_string());
        line("NarSize", &self.nar_size.to_string());
        line("References", &self.references.join(" "));
        if let Some(d) = &self.deriver {
            line("Deriver", d);
        }
        for sig in &self.sigs {
            line("Sig", sig);
        }
        if let Some(ca) = &self.ca {
            line("CA", ca);
        }
        for (k, v) in &self.extra {
            line(k, v);
        }
        out
    }

    /// The store dir and the parsed store path of `store_path`.
    pub fn split_store_path(&self) -> Result<(&str, StorePath), Error> {
        split_full_path(&self.store_path)
    }

    /// The string signatures cover (see [`signing::fingerprint`]), using the store
    /// dir of `store_path`.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let (dir, _) = self.split_store_path()?;
        Ok(signing::fingerprint(
            dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        ))
    }

    /// Add `key`'s signature unless the same signature is already there.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), Error> {
        let sig = key.sign(&self.fingerprint()?);
        if !self.sigs.contains(&sig) {
            self.sigs.push(sig);
        }
        Ok(())
    }

    /// True when one of `sigs` is a valid signature by `key`.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        match self.fingerprint() {
            Ok(fp) => self.sigs.iter().any(|s| key.verify(&fp, s)),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/narinfo");

    /// Every `.narinfo` file of the corpus (written by Nix 2.8), with its name.
    fn corpus() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(DATA).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "narinfo") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
        out.sort();
        out
    }

    const MINIMAL: &str = "StorePath: /nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep\n\
URL: nar/1nj8qw83jfbq7chly2fbkqlgz29s7ic96vki3j4dfv0vwz594s94.nar.zst\n\
Compression: zstd\n\
FileHash: sha256:1nj8qw83jfbq7chly2fbkqlgz29s7ic96vki3j4dfv0vwz594s94\n\
FileSize: 89\n\
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
NarSize: 120\n\
References: \n\
Deriver: a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv\n";

    fn assert_rejected(text: &str) -> String {
        match NarInfo::parse(text) {
            Err(Error::NarInfo(m)) => m,
            other => panic!("expected a NarInfo error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn corpus_round_trips_byte_for_byte() {
        let corpus = corpus();
        assert!(corpus.len() >= 6, "corpus has {} files", corpus.len());
        for (name, text) in &corpus {
            let info = NarInfo::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&info.render(), text, "{name}");
            // Fields parse into what Nix meant.
            let (dir, path) = info.split_store_path().unwrap();
            assert_eq!(dir, "/nix/store", "{name}");
            assert_eq!(path.to_full_path(dir), info.store_path, "{name}");
            assert!(
                text.contains(&format!("NarHash: {}\n", info.nar_hash)),
                "{name}"
            );
            assert!(info.nar_size > 0, "{name}");
            assert!(info.compression.is_some(), "{name}");
            assert!(
                info.file_hash.is_some() && info.file_size.is_some(),
                "{name}"
            );
            assert!(info.extra.is_empty(), "{name}");
            for r in &info.references {
                StorePath::from_basename(r).unwrap();
            }
            if let Some(ca) = &info.ca {
                // A NAR-hashed CA path: CA repeats NarHash.
                if ca.starts_with("fixed:r:sha256:") {
                    assert_eq!(ca, &format!("fixed:r:{}", info.nar_hash), "{name}");
                }
            }
        }
    }

    #[test]
    fn corpus_covers_the_interesting_shapes() {
        let infos: Vec<NarInfo> = corpus()
            .iter()
            .map(|(_, t)| NarInfo::parse(t).unwrap())
            .collect();
        let compressions: std::collections::BTreeSet<_> = infos
            .iter()
            .filter_map(|i| i.compression.as_deref())
            .collect();
        for c in ["none", "zstd", "xz", "bzip2"] {
            assert!(compressions.contains(c), "no {c} narinfo in the corpus");
        }
        assert!(infos.iter().any(|i| i.references.is_empty()));
        assert!(infos.iter().any(|i| i.references.len() >= 2));
        assert!(infos.iter().any(|i| i.ca.is_some() && !i.sigs.is_empty()));
        assert!(infos.iter().any(|i| i.deriver.is_none()));
        assert!(infos.iter().any(|i| i.sigs.len() >= 2));
        assert!(infos.iter().any(|i| {
            let base = i.split_store_path().unwrap().1.basename();
            i.references.contains(&base)
        }));
    }

    #[test]
    fn minimal_fields() {
        let info = NarInfo::parse(MINIMAL).unwrap();
        assert_eq!(
            info.store_path,
            "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep"
        );
        assert_eq!(info.compression.as_deref(), Some("zstd"));
        assert_eq!(info.file_size, Some(89));
        assert_eq!(info.nar_size, 120);
        assert!(info.references.is_empty());
        assert_eq!(
            info.deriver.as_deref(),
            Some("a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv")
        );
        assert!(info.sigs.is_empty());
        assert_eq!(info.ca, None);
        assert_eq!(info.render(), MINIMAL);
    }

    #[test]
    fn missing_compression_line_stays_absent() {
        let text = MINIMAL.replace("Compression: zstd\n", "");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.compression, None);
        assert_eq!(info.render(), text);
    }

    #[test]
    fn optional_fields_may_all_be_absent() {
        let text = "StorePath: /nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep\n\
URL: x\n\
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n\
NarSize: 120\n";
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(info.file_hash, None);
        assert_eq!(info.file_size, None);
        assert!(info.references.is_empty());
        // Render adds the (empty) References line Nix always writes.
        assert_eq!(info.render(), format!("{text}References: \n"));
    }

    #[test]
    fn empty_references() {
        let info = NarInfo::parse(MINIMAL).unwrap();
        assert!(info.references.is_empty());
        assert!(info.render().contains("\nReferences: \n"));
    }

    #[test]
    fn references_keep_order_and_tolerate_extra_spaces() {
        let text = MINIMAL.replace(
            "References: \n",
            "References:  pd49igwa9j13b8svlsb0hpzygzsdml40-top   5l5zgmafrv6c553zxqf397mb7pscgh75-mid \n",
        );
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(
            info.references,
            [
                "pd49igwa9j13b8svlsb0hpzygzsdml40-top",
                "5l5zgmafrv6c553zxqf397mb7pscgh75-mid"
            ]
        );
        assert!(info.render().contains(
            "\nReferences: pd49igwa9j13b8svlsb0hpzygzsdml40-top 5l5zgmafrv6c553zxqf397mb7pscgh75-mid\n"
        ));
    }

    #[test]
    fn bad_references_are_rejected() {
        for bad in [
            "/nix/store/pd49igwa9j13b8svlsb0hpzygzsdml40-top",
            "pd49igwa9j13b8svlsb0hpzygzsdml40",
            "top",
            "pd49igwa9j13b8svlsb0hpzygzsdml40-top\tx",
        ] {
            assert_rejected(&MINIMAL.replace("References: \n", &format!("References: {bad}\n")));
        }
    }

    #[test]
    fn unknown_fields_are_kept_and_written_last() {
        let text = MINIMAL.replace("URL:", "System: x86_64-linux\nURL:")
            + "Provenance: {\"a\": 1}\nSystem: again\nEmpty: \n";
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(
            info.extra,
            [
                ("System".to_string(), "x86_64-linux".to_string()),
                ("Provenance".to_string(), "{\"a\": 1}".to_string()),
                ("System".to_string(), "again".to_string()),
                ("Empty".to_string(), String::new()),
            ]
        );
        let rendered = info.render();
        assert_eq!(
            rendered,
            MINIMAL.to_string()
                + "System: x86_64-linux\nProvenance: {\"a\": 1}\nSystem: again\nEmpty: \n"
        );
        assert_eq!(NarInfo::parse(&rendered).unwrap(), info);
    }

    #[test]
    fn known_fields_in_any_order_render_in_nix_order() {
        let mut lines: Vec<&str> = MINIMAL.lines().collect();
        lines.reverse();
        let text = lines.join("\n") + "\n";
        assert_eq!(NarInfo::parse(&text).unwrap().render(), MINIMAL);
    }

    #[test]
    fn duplicate_store_path_rejected() {
        let text = format!("{MINIMAL}StorePath: /nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep\n");
        let msg = assert_rejected(&text);
        assert!(msg.contains("StorePath appears more than once"), "{msg}");
    }

    #[test]
    fn duplicate_single_valued_fields_rejected() {
        for line in [
            "URL: y",
            "Compression: xz",
            "FileHash: sha256:1nj8qw83jfbq7chly2fbkqlgz29s7ic96vki3j4dfv0vwz594s94",
            "FileSize: 1",
            "NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv",
            "NarSize: 120",
            "References: ",
            "Deriver: a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv",
            "Deriver: unknown-deriver",
        ] {
            assert_rejected(&format!("{MINIMAL}{line}\n"));
        }
        let with_ca = format!("{MINIMAL}CA: text:sha256:x\n");
        assert_rejected(&format!("{with_ca}CA: text:sha256:x\n"));
    }

    #[test]
    fn repeated_sig_lines_are_kept_in_order() {
        let text = format!("{MINIMAL}Sig: b:AAAA\nSig: a:BBBB\nSig: b:AAAA\n");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.sigs, ["b:AAAA", "a:BBBB", "b:AAAA"]);
        assert_eq!(info.render(), text);
    }

    #[test]
    fn bad_nar_size_rejected() {
        for bad in [
            "0",
            "-1",
            "+1",
            "1.0",
            "1 ",
            " 1",
            "0x10",
            "abc",
            "18446744073709551616",
        ] {
            assert_rejected(&MINIMAL.replace("NarSize: 120", &format!("NarSize: {bad}")));
        }
        // The largest u64 is fine, and leading zeros are read as decimal.
        let big = NarInfo::parse(&MINIMAL.replace("NarSize: 120", "NarSize: 18446744073709551615"));
        assert_eq!(big.unwrap().nar_size, u64::MAX);
        let padded = NarInfo::parse(&MINIMAL.replace("NarSize: 120", "NarSize: 0120")).unwrap();
        assert_eq!(padded.nar_size, 120);
    }

    #[test]
    fn bad_file_size_rejected() {
        for bad in ["-1", "x", "1e3"] {
            assert_rejected(&MINIMAL.replace("FileSize: 89", &format!("FileSize: {bad}")));
        }
        // FileSize 0 is allowed: Nix reads 0 as "unknown".
        assert!(NarInfo::parse(&MINIMAL.replace("FileSize: 89", "FileSize: 0")).is_ok());
    }

    #[test]
    fn bad_hashes_rejected() {
        for (key, bad) in [
            (
                "NarHash",
                "sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknv",
            ),
            (
                "NarHash",
                "md5:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv",
            ),
            (
                "NarHash",
                "00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv",
            ),
            ("FileHash", "sha256:xyz"),
        ] {
            let old = MINIMAL
                .lines()
                .find(|l| l.starts_with(&format!("{key}: ")))
                .unwrap();
            assert_rejected(&MINIMAL.replace(old, &format!("{key}: {bad}")));
        }
    }

    #[test]
    fn hashes_in_other_spellings_are_accepted_and_rendered_as_nix32() {
        let h =
            Sha256::parse("sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv").unwrap();
        for spelling in [format!("sha256:{}", h.to_hex()), h.to_sri()] {
            let text = MINIMAL.replace(&h.to_nix_string(), &spelling);
            let info = NarInfo::parse(&text).unwrap();
            assert_eq!(info.nar_hash, h);
            assert_eq!(info.render(), MINIMAL);
        }
    }

    #[test]
    fn required_fields() {
        for key in ["StorePath", "URL", "NarHash", "NarSize"] {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}: ")))
                .map(|l| format!("{l}\n"))
                .collect();
            let msg = assert_rejected(&text);
            assert!(msg.contains(key), "{msg}");
        }
        assert_rejected("");
    }

    #[test]
    fn empty_values_of_known_fields_rejected() {
        for key in [
            "StorePath",
            "URL",
            "Compression",
            "FileHash",
            "FileSize",
            "NarHash",
            "NarSize",
            "Deriver",
        ] {
            let old = MINIMAL
                .lines()
                .find(|l| l.starts_with(&format!("{key}: ")))
                .unwrap();
            assert_rejected(&MINIMAL.replace(old, &format!("{key}: ")));
        }
        assert_rejected(&format!("{MINIMAL}Sig: \n"));
        assert_rejected(&format!("{MINIMAL}CA: \n"));
    }

    #[test]
    fn crlf_rejected() {
        let msg = assert_rejected(&MINIMAL.replace('\n', "\r\n"));
        assert!(msg.contains("carriage return"), "{msg}");
        // Even a single stray \r in a value.
        assert_rejected(&MINIMAL.replace("URL: nar/", "URL: nar\r/"));
    }

    #[test]
    fn missing_trailing_newline_rejected() {
        let msg = assert_rejected(MINIMAL.trim_end_matches('\n'));
        assert!(msg.contains("truncated"), "{msg}");
        // A narinfo cut inside a Sig line is caught the same way.
        let signed = format!("{MINIMAL}Sig: larder-test-1:abcdefgh\n");
        assert_rejected(&signed[..signed.len() - 4]);
    }

    #[test]
    fn malformed_lines_rejected() {
        for bad_line in [
            "", // blank line
            "NoColon",
            "Key:NoSpace",
            ": value",     // empty key
            " Key: value", // key with whitespace
            "Ke y: value",
            "a:b: value",  // key with a colon
            "References:", // no space after the colon
        ] {
            assert_rejected(&format!("{MINIMAL}{bad_line}\n"));
        }
        // A blank line at the very end (\n\n).
        assert_rejected(&format!("{MINIMAL}\n"));
    }

    #[test]
    fn values_may_contain_colon_space() {
        let text = MINIMAL.replace("URL: nar/", "URL: https://example.org/x: y/");
        let info = NarInfo::parse(&text).unwrap();
        assert!(info.url.starts_with("https://example.org/x: y/"));
        assert_eq!(info.render(), text);
    }

    #[test]
    fn bad_store_paths_rejected() {
        for bad in [
            "gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
            "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr",
            "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep/bin",
            "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-.dep",
            "nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
            "/nix/../gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
            "/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
        ] {
            assert_rejected(&MINIMAL.replace(
                "StorePath: /nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
                &format!("StorePath: {bad}"),
            ));
        }
        // Another store dir is fine; checking it is the caller's business.
        let other = MINIMAL.replace("/nix/store/", "/var/larder/store/");
        let info = NarInfo::parse(&other).unwrap();
        assert_eq!(info.split_store_path().unwrap().0, "/var/larder/store");
    }

    #[test]
    fn unknown_deriver_means_none() {
        let text = MINIMAL.replace(
            "Deriver: a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv",
            "Deriver: unknown-deriver",
        );
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.deriver, None);
        assert!(!info.render().contains("Deriver"));
    }

    #[test]
    fn bad_deriver_rejected() {
        for bad in [
            "dep.drv",
            "/nix/store/a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv",
        ] {
            assert_rejected(&MINIMAL.replace("a7cpnr76saxp66dd1y64b7kd085ivjry-dep.drv", bad));
        }
    }

    #[test]
    fn sign_and_verify_helpers() {
        let sk = crate::nix::signing::SecretKey::parse(
            &std::fs::read_to_string(format!("{DATA}/larder-test-1.sk")).unwrap(),
        )
        .unwrap();
        let mut info = NarInfo::parse(MINIMAL).unwrap();
        assert!(!info.is_signed_by(&sk.public()));
        info.sign(&sk).unwrap();
        info.sign(&sk).unwrap();
        assert_eq!(info.sigs.len(), 1);
        assert!(info.is_signed_by(&sk.public()));
        // The same signature Nix wrote for this path (zstd-signed-no-refs.narinfo).
        assert_eq!(
            info.sigs[0],
            "larder-test-1:r3O/0qcM7SwviHe+zLQ3YGAIIKuNNSe6GR1IF/2OOcdXf/3cnvyzTrw+ClaZ6EFAURIuoo0+mn36eReOM3RwCQ=="
        );
        // Changing a signed field breaks it; changing an unsigned one does not.
        let mut unsigned_change = info.clone();
        unsigned_change.url = "elsewhere".into();
        unsigned_change.deriver = None;
        assert!(unsigned_change.is_signed_by(&sk.public()));
        let mut signed_change = info.clone();
        signed_change.nar_size += 1;
        assert!(!signed_change.is_signed_by(&sk.public()));
    }

    fn basename() -> impl Strategy<Value = String> {
        (any::<[u8; 20]>(), "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,30}").prop_map(|(h, name)| {
            StorePath {
                hash: crate::nix::store_path::StorePathHash(h),
                name,
            }
            .basename()
        })
    }

    fn value() -> impl Strategy<Value = String> {
        "[^\r\n]{1,40}"
    }

    prop_compose! {
        fn arb_narinfo()(
            store_path in basename().prop_map(|b| format!("/nix/store/{b}")),
            url in value(),
            compression in proptest::option::of("[a-z0-9]{1,8}"),
            file_hash in proptest::option::of(any::<[u8; 32]>().prop_map(Sha256)),
            file_size in proptest::option::of(any::<u64>()),
            nar_hash in any::<[u8; 32]>().prop_map(Sha256),
            nar_size in 1..=u64::MAX,
            references in proptest::collection::vec(basename(), 0..5),
            deriver in proptest::option::of(basename()),
            sigs in proptest::collection::vec(value(), 0..3),
            ca in proptest::option::of(value()),
            extra in proptest::collection::vec(
                ("[A-Z][A-Za-z0-9_-]{0,12}".prop_filter("known key", |k| !is_known_key(k)),
                 "[^\r\n]{0,30}"),
                0..3,
            ),
        ) -> NarInfo {
            NarInfo {
                store_path, url, compression, file_hash, file_size, nar_hash, nar_size,
                references, deriver, sigs, ca, extra,
            }
        }
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(info in arb_narinfo()) {
            let text = info.render();
            prop_assert_eq!(NarInfo::parse(&text).unwrap(), info.clone());
            prop_assert_eq!(NarInfo::parse(&text).unwrap().render(), text);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            let _ = NarInfo::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_mutated_corpus(
            index in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
            insert in "[\\PC\n]{0,8}",
        ) {
            let corpus = corpus();
            let (_, text) = &corpus[index.index(corpus.len())];
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
            if let Ok(info) = NarInfo::parse(&mutated) {
                // Whatever parses renders to something that parses to the same.
                prop_assert_eq!(NarInfo::parse(&info.render()).unwrap(), info);
            }
        }
    }
}
