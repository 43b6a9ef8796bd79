//! A streaming validator for the NAR (Nix ARchive) format.
//!
//! Grammar (every string is a u64 little-endian length, the bytes, then zero
//! padding to a multiple of 8):
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <string>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//! Entry names are strictly ascending, non-empty, not `.` or `..`, and contain no
//! `/` or NUL. Padding bytes must be zero.
//!
//! Limits beyond the grammar (Nix itself has none), each one past what real file
//! systems produce: entry names are at most [`MAX_NAME_BYTES`] bytes; symlink
//! targets are 1 to [`MAX_TARGET_BYTES`] bytes without NUL (an empty target cannot
//! be created, Linux's `PATH_MAX` bounds the rest); directories nest at most
//! [`MAX_DEPTH`] deep. These keep memory bounded whatever the input claims.
//!
//! How it works: two layers. The *lexer* cuts the byte stream into strings (an
//! 8-byte length, the body, the padding), keeping a string's body only when the
//! parser needs to look at it (tokens, names, targets) and counting past file
//! contents. The *parser* is a flat state machine over the grammar, plus a stack
//! holding the last entry name of every open directory. A length prefix is judged
//! before its body is read, so a huge length is never allocated. Errors name the
//! byte offset where the offending string (or padding byte) starts; the result
//! does not depend on how the input is split into `feed` calls.
//!
//! Not here: hashing (callers hash the same bytes), unpacking, or listing.

use super::Error;

/// Longest entry name, in bytes. Linux's `NAME_MAX` is 255 bytes, but macOS
/// allows 255 UTF-16 units, up to 765 bytes of UTF-8; this leaves room for both.
pub const MAX_NAME_BYTES: u64 = 1024;
/// Longest symlink target, in bytes (Linux `PATH_MAX` minus the NUL).
pub const MAX_TARGET_BYTES: u64 = 4095;
/// Deepest directory nesting accepted. Each level keeps one name (at most
/// [`MAX_NAME_BYTES`]), so the stack stays within 2 MiB.
pub const MAX_DEPTH: usize = 2048;

/// Width of a string's length prefix.
const LEN_BYTES: usize = 8;

/// Where the parser is in the grammar: what the next string must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Magic,
    NodeOpen,
    Type,
    TypeValue,
    /// After `regular`: `executable` or `contents`.
    RegularTag,
    /// After `executable`: the empty string.
    ExecutableEmpty,
    /// After `executable ""`: `contents`.
    ContentsTag,
    /// The file's bytes.
    Contents,
    /// `)` closing a regular file or symlink node.
    NodeClose,
    TargetTag,
    Target,
    /// Inside a directory: `entry` or the `)` closing the directory.
    EntryOrClose,
    EntryOpen,
    NameTag,
    Name,
    NodeTag,
    /// `)` closing a directory entry.
    EntryClose,
    /// The archive is complete; nothing may follow.
    End,
}

/// What kind of string a [`Step`] expects.
enum Want {
    /// One of these exact byte strings.
    Tokens(&'static [&'static [u8]]),
    Name,
    Target,
    Contents,
    End,
}

impl Step {
    fn want(self) -> Want {
        match self {
            Step::Magic => Want::Tokens(&[b"nix-archive-1"]),
            Step::NodeOpen | Step::EntryOpen => Want::Tokens(&[b"("]),
            Step::Type => Want::Tokens(&[b"type"]),
            Step::TypeValue => Want::Tokens(&[b"regular", b"symlink", b"directory"]),
            Step::RegularTag => Want::Tokens(&[b"executable", b"contents"]),
            Step::ExecutableEmpty => Want::Tokens(&[b""]),
            Step::ContentsTag => Want::Tokens(&[b"contents"]),
            Step::Contents => Want::Contents,
            Step::NodeClose | Step::EntryClose => Want::Tokens(&[b")"]),
            Step::TargetTag => Want::Tokens(&[b"target"]),
            Step::Target => Want::Target,
            Step::EntryOrClose => Want::Tokens(&[b"entry", b")"]),
            Step::NameTag => Want::Tokens(&[b"name"]),
            Step::Name => Want::Name,
            Step::NodeTag => Want::Tokens(&[b"node"]),
            Step::End => Want::End,
        }
    }
}

/// Where the lexer is inside the current string.
#[derive(Clone, Copy, Debug)]
enum Lex {
    /// Reading the 8-byte length prefix; `have` bytes are in `buf`.
    Len { buf: [u8; LEN_BYTES], have: usize },
    /// Reading the body: `remaining` bytes to go, kept in `NarValidator::buf`
    /// when `keep`.
    Body {
        remaining: u64,
        len: u64,
        keep: bool,
    },
    /// Reading `remaining` zero bytes of padding.
    Pad { remaining: usize },
}

const LEX_START: Lex = Lex::Len {
    buf: [0; LEN_BYTES],
    have: 0,
};

/// Validates a NAR fed in pieces of any size. Memory is bounded by the nesting
/// depth and the longest name, never by file contents.
#[derive(Clone, Debug)]
pub struct NarValidator {
    step: Step,
    lex: Lex,
    /// Body of the current string, when it is one the parser inspects.
    buf: Vec<u8>,
    /// Last entry name of each open directory (empty before the first entry;
    /// names are never empty).
    dirs: Vec<Vec<u8>>,
    /// Bytes consumed so far.
    pos: u64,
    /// Offset of the first byte of the current string's length prefix.
    string_start: u64,
    /// The first error, repeated by every later call.
    failed: Option<String>,
}

/// Show bytes from the input in an error message, shortened.
fn show(bytes: &[u8]) -> String {
    const SHOWN: usize = 40;
    let head = bytes.get(..SHOWN).unwrap_or(bytes);
    let more = if bytes.len() > SHOWN { "..." } else { "" };
    format!("\"{}{more}\"", head.escape_ascii())
}

/// Show the choices of a token set.
fn show_tokens(tokens: &[&[u8]]) -> String {
    tokens
        .iter()
        .map(|t| show(t))
        .collect::<Vec<_>>()
        .join(" or ")
}

impl NarValidator {
    pub fn new() -> Self {
        NarValidator {
            step: Step::Magic,
            lex: LEX_START,
            buf: Vec::new(),
            dirs: Vec::new(),
            pos: 0,
            string_start: 0,
            failed: None,
        }
    }

    /// Feed the next bytes. Fails as soon as the stream cannot be a NAR, including
    /// bytes after the end of the archive.
    ///
    /// After a failure, every later call fails with the same error.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(msg) = &self.failed {
            return Err(Error::Nar(msg.clone()));
        }
        self.run(data).map_err(|msg| {
            self.failed = Some(msg.clone());
            Error::Nar(msg)
        })
    }

    /// The stream ended: fails when the archive is incomplete (cut short).
    pub fn finish(&self) -> Result<(), Error> {
        if let Some(msg) = &self.failed {
            return Err(Error::Nar(msg.clone()));
        }
        if self.is_complete() {
            return Ok(());
        }
        let inside = match self.lex {
            Lex::Len { have: 0, .. } => String::new(),
            Lex::Len { .. } => " inside a length prefix".to_string(),
            Lex::Body { remaining, .. } => format!(" with {remaining} bytes of a string missing"),
            Lex::Pad { .. } => " inside padding".to_string(),
        };
        Err(Error::Nar(format!(
            "the archive is cut short at byte {}{inside}; expected {}",
            self.pos,
            self.describe_step()
        )))
    }

    /// True when the bytes fed so far are a whole NAR.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none()
            && self.step == Step::End
            && matches!(self.lex, Lex::Len { have: 0, .. })
    }

    /// Bytes consumed so far: everything fed, or up to the offending byte once a
    /// call has failed. For a complete archive this is the NAR size.
    pub fn bytes_seen(&self) -> u64 {
        self.pos
    }

    fn describe_step(&self) -> String {
        match self.step.want() {
            Want::Tokens(t) => show_tokens(t),
            Want::Name => "an entry name".into(),
            Want::Target => "a symlink target".into(),
            Want::Contents => "file contents".into(),
            Want::End => "nothing more".into(),
        }
    }

    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n as u64);
    }

    fn run(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match self.lex {
                Lex::Len { mut buf, have } => {
                    if have == 0 {
                        if self.step == Step::End {
                            return Err(format!(
                                "trailing data at byte {} after the end of the archive",
                                self.pos
                            ));
                        }
                        self.string_start = self.pos;
                    }
                    let take = (LEN_BYTES - have).min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(dst) = buf.get_mut(have..have + take) {
                        dst.copy_from_slice(head);
                    }
                    data = rest;
                    self.advance(take);
                    if have + take == LEN_BYTES {
                        self.lex = LEX_START;
                        self.start_string(u64::from_le_bytes(buf))?;
                    } else {
                        self.lex = Lex::Len {
                            buf,
                            have: have + take,
                        };
                    }
                }
                Lex::Body {
                    remaining,
                    len,
                    keep,
                } => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let (head, rest) = data.split_at(take);
                    if keep {
                        self.buf.extend_from_slice(head);
                    }
                    data = rest;
                    self.advance(take);
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.end_body(len)?;
                    } else {
                        self.lex = Lex::Body {
                            remaining,
                            len,
                            keep,
                        };
                    }
                }
                Lex::Pad { remaining } => {
                    let take = remaining.min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(i) = head.iter().position(|&b| b != 0) {
                        // Counted up to the offending byte, however the input was split.
                        self.advance(i);
                        return Err(format!("non-zero padding byte at byte {}", self.pos));
                    }
                    data = rest;
                    self.advance(take);
                    self.lex = if take == remaining {
                        LEX_START
                    } else {
                        Lex::Pad {
                            remaining: remaining - take,
                        }
                    };
                }
            }
        }
        Ok(())
    }

    /// A length prefix has been read: judge it before reading the body.
    fn start_string(&mut self, len: u64) -> Result<(), String> {
        let at = self.string_start;
        let keep = match self.step.want() {
            Want::Tokens(tokens) => {
                if !tokens.iter().any(|t| t.len() as u64 == len) {
                    return Err(format!(
                        "at byte {at}: expected {}, found a string of {len} bytes",
                        show_tokens(tokens)
                    ));
                }
                true
            }
            Want::Name => {
                if len == 0 {
                    return Err(format!("at byte {at}: empty entry name"));
                }
                if len > MAX_NAME_BYTES {
                    return Err(format!(
                        "at byte {at}: entry name of {len} bytes, longer than \
                         {MAX_NAME_BYTES}"
                    ));
                }
                true
            }
            Want::Target => {
                if len == 0 {
                    return Err(format!("at byte {at}: empty symlink target"));
                }
                if len > MAX_TARGET_BYTES {
                    return Err(format!(
                        "at byte {at}: symlink target of {len} bytes, longer than \
                         {MAX_TARGET_BYTES}"
                    ));
                }
                true
            }
            Want::Contents => false,
            // `run` rejects any byte once the archive has ended.
            Want::End => return Err(format!("at byte {at}: data after the end of the archive")),
        };
        self.buf.clear();
        if len == 0 {
            self.end_body(0)
        } else {
            self.lex = Lex::Body {
                remaining: len,
                len,
                keep,
            };
            Ok(())
        }
    }

    /// A string's body is complete: set up its padding, then parse it.
    fn end_body(&mut self, len: u64) -> Result<(), String> {
        // `len % 8` is below 8, so the cast cannot truncate.
        let pad = ((LEN_BYTES as u64 - len % LEN_BYTES as u64) % LEN_BYTES as u64) as usize;
        self.lex = if pad == 0 {
            LEX_START
        } else {
            Lex::Pad { remaining: pad }
        };
        self.accept_string()
    }

    /// The parser: consume the string just read (in `buf` unless it was contents).
    fn accept_string(&mut self) -> Result<(), String> {
        let at = self.string_start;
        let s = std::mem::take(&mut self.buf);
        let result = self.accept(&s, at);
        // Give the allocation back for the next string.
        self.buf = s;
        result
    }

    fn accept(&mut self, s: &[u8], at: u64) -> Result<(), String> {
        if let Want::Tokens(tokens) = self.step.want() {
            if !tokens.contains(&s) {
                return Err(format!(
                    "at byte {at}: expected {}, found {}",
                    show_tokens(tokens),
                    show(s)
                ));
            }
        }
        self.step = match (self.step, s) {
            (Step::Magic, _) => Step::NodeOpen,
            (Step::NodeOpen, _) => Step::Type,
            (Step::Type, _) => Step::TypeValue,
            (Step::TypeValue, b"regular") => Step::RegularTag,
            (Step::TypeValue, b"symlink") => Step::TargetTag,
            (Step::TypeValue, _) => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(format!(
                        "at byte {at}: directories nested deeper than {MAX_DEPTH}"
                    ));
                }
                self.dirs.push(Vec::new());
                Step::EntryOrClose
            }
            (Step::RegularTag, b"executable") => Step::ExecutableEmpty,
            (Step::RegularTag, _) => Step::Contents,
            (Step::ExecutableEmpty, _) => Step::ContentsTag,
            (Step::ContentsTag, _) => Step::Contents,
            (Step::Contents, _) => Step::NodeClose,
            (Step::NodeClose, _) => self.after_node(),
            (Step::TargetTag, _) => Step::Target,
            (Step::Target, _) => {
                if s.contains(&0) {
                    return Err(format!("at byte {at}: symlink target contains NUL"));
                }
                Step::NodeClose
            }
            (Step::EntryOrClose, b"entry") => Step::EntryOpen,
            (Step::EntryOrClose, _) => {
                self.dirs.pop();
                self.after_node()
            }
            (Step::EntryOpen, _) => Step::NameTag,
            (Step::NameTag, _) => Step::Name,
            (Step::Name, _) => {
                self.accept_name(s, at)?;
                Step::NodeTag
            }
            (Step::NodeTag, _) => Step::NodeOpen,
            (Step::EntryClose, _) => Step::EntryOrClose,
            (Step::End, _) => {
                return Err(format!("at byte {at}: data after the end of the archive"))
            }
        };
        Ok(())
    }

    /// A node has closed: the archive ends, or the entry holding it does.
    fn after_node(&self) -> Step {
        if self.dirs.is_empty() {
            Step::End
        } else {
            Step::EntryClose
        }
    }

    fn accept_name(&mut self, name: &[u8], at: u64) -> Result<(), String> {
        if name == b"." || name == b".." {
            return Err(format!(
                "at byte {at}: entry name {} is not allowed",
                show(name)
            ));
        }
        if name.contains(&b'/') || name.contains(&0) {
            return Err(format!(
                "at byte {at}: entry name {} contains `/` or NUL",
                show(name)
            ));
        }
        let Some(last) = self.dirs.last_mut() else {
            return Err(format!("at byte {at}: entry outside a directory"));
        };
        if !last.is_empty() && name <= last.as_slice() {
            return Err(format!(
                "at byte {at}: entry {} does not sort after {} (unsorted or duplicate)",
                show(name),
                show(last)
            ));
        }
        last.clear();
        last.extend_from_slice(name);
        Ok(())
    }
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::Sha256;
    use crate::nix::narinfo::NarInfo;
    use proptest::prelude::*;

    const NAR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nar");
    const NARINFO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/narinfo");

    /// The NARs `nix-store --dump` wrote, by file name.
    fn real_nars() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(NAR_DIR).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "nar") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
        out.sort();
        assert!(out.len() >= 5);
        out
    }

    fn real(name: &str) -> Vec<u8> {
        std::fs::read(format!("{NAR_DIR}/{name}")).unwrap()
    }

    /// Feed `data` split at `cuts` (sorted offsets), then finish.
    fn validate_split(data: &[u8], cuts: &[usize]) -> Result<(), Error> {
        let mut v = NarValidator::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            let cut = cut.clamp(start, data.len());
            v.feed(&data[start..cut])?;
            start = cut;
        }
        v.finish()?;
        assert_eq!(v.bytes_seen(), data.len() as u64);
        Ok(())
    }

    fn validate(data: &[u8]) -> Result<(), Error> {
        validate_split(data, &[])
    }

    // --- building NARs by hand -------------------------------------------------

    fn str_(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }

    fn strs(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            str_(&mut out, p);
        }
        out
    }

    #[derive(Clone, Debug)]
    enum Node {
        File { executable: bool, contents: Vec<u8> },
        Symlink(Vec<u8>),
        Dir(Vec<(Vec<u8>, Node)>),
    }

    fn write_node(out: &mut Vec<u8>, node: &Node) {
        str_(out, b"(");
        str_(out, b"type");
        match node {
            Node::File {
                executable,
                contents,
            } => {
                str_(out, b"regular");
                if *executable {
                    str_(out, b"executable");
                    str_(out, b"");
                }
                str_(out, b"contents");
                str_(out, contents);
            }
            Node::Symlink(target) => {
                str_(out, b"symlink");
                str_(out, b"target");
                str_(out, target);
            }
            Node::Dir(entries) => {
                str_(out, b"directory");
                for (name, child) in entries {
                    str_(out, b"entry");
                    str_(out, b"(");
                    str_(out, b"name");
                    str_(out, name);
                    str_(out, b"node");
                    write_node(out, child);
                    str_(out, b")");
                }
            }
        }
        str_(out, b")");
    }

    fn nar(node: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        str_(&mut out, b"nix-archive-1");
        write_node(&mut out, node);
        out
    }

    fn file(contents: &[u8]) -> Node {
        Node::File {
            executable: false,
            contents: contents.to_vec(),
        }
    }

    fn dir(entries: &[(&str, Node)]) -> Node {
        Node::Dir(
            entries
                .iter()
                .map(|(n, c)| (n.as_bytes().to_vec(), c.clone()))
                .collect(),
        )
    }

    fn expect_err(data: &[u8], needle: &str) {
        match validate(data) {
            Err(Error::Nar(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected an error containing {needle:?}, got {other:?}"),
        }
    }

    // --- real NARs -------------------------------------------------------------

    #[test]
    fn real_nars_are_valid() {
        for (name, data) in real_nars() {
            validate(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Byte by byte too.
            let mut v = NarValidator::new();
            for b in &data {
                v.feed(std::slice::from_ref(b)).unwrap();
            }
            v.finish().unwrap();
            assert!(v.is_complete());
        }
    }

    /// The NARs are the ones the corpus narinfos describe: hash and size match.
    #[test]
    fn real_nars_match_their_narinfos() {
        let infos: Vec<NarInfo> = std::fs::read_dir(NARINFO_DIR)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
            .map(|p| NarInfo::parse(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect();
        for (name, data) in real_nars() {
            let h = Sha256::digest(&data);
            let info = infos
                .iter()
                .find(|i| i.nar_hash == h)
                .unwrap_or_else(|| panic!("{name}: no narinfo has NarHash {h}"));
            assert_eq!(info.nar_size, data.len() as u64, "{name}");
        }
    }

    #[test]
    fn hand_built_nars_match_real_ones() {
        // regular.nar is `echo dep > $out`.
        assert_eq!(nar(&file(b"dep\n")), real("regular.nar"));
        assert_eq!(
            nar(&Node::File {
                executable: true,
                contents: b"#!/bin/sh\n".to_vec()
            }),
            real("executable.nar")
        );
        assert_eq!(
            nar(&Node::Symlink(b"/etc/hostname".to_vec())),
            real("symlink.nar")
        );
        assert_eq!(nar(&dir(&[])), real("empty-dir.nar"));
    }

    // --- malformed input -------------------------------------------------------

    #[test]
    fn wrong_magic() {
        let mut data = real("regular.nar");
        data[8] = b'N';
        expect_err(&data, "nix-archive-1");
        expect_err(&strs(&[b"nix-archive-2"]), "nix-archive-1");
        // A wrong length for the magic fails on the length alone.
        let mut v = NarValidator::new();
        assert!(v.feed(&5u64.to_le_bytes()).is_err());
        assert_eq!(v.bytes_seen(), 8);
    }

    #[test]
    fn empty_input_is_incomplete() {
        let v = NarValidator::new();
        assert!(!v.is_complete());
        assert!(matches!(v.finish(), Err(Error::Nar(_))));
    }

    #[test]
    fn truncated_at_every_offset_never_succeeds() {
        for (name, data) in real_nars() {
            for cut in 0..data.len() {
                let mut v = NarValidator::new();
                let fed = v.feed(&data[..cut]);
                assert!(
                    fed.is_err() || v.finish().is_err(),
                    "{name} cut at {cut} of {} was accepted",
                    data.len()
                );
                // A prefix of a valid NAR is never rejected by feed itself.
                assert!(fed.is_ok(), "{name} cut at {cut}: {fed:?}");
            }
        }
    }

    #[test]
    fn non_zero_padding() {
        // The magic is 13 bytes: padding at 8+13 .. 8+16.
        let mut data = real("regular.nar");
        data[22] = 1;
        expect_err(&data, "non-zero padding byte at byte 22");
        // Padding after file contents ("dep\n" is padded by 4 bytes).
        let mut data = real("regular.nar");
        let contents_at = data.windows(4).position(|w| w == b"dep\n").unwrap();
        data[contents_at + 5] = 0xff;
        expect_err(&data, "non-zero padding");
    }

    #[test]
    fn unsorted_entries() {
        let data = nar(&dir(&[("b", file(b"")), ("a", file(b""))]));
        expect_err(&data, "does not sort after");
        // Byte order, not locale order: "B" < "a".
        assert!(validate(&nar(&dir(&[("B", file(b"")), ("a", file(b""))]))).is_ok());
        // Ordering is per directory.
        let ok = dir(&[
            ("a", dir(&[("z", file(b""))])),
            ("b", dir(&[("a", file(b""))])),
        ]);
        assert!(validate(&nar(&ok)).is_ok());
    }

    #[test]
    fn duplicate_entries() {
        let data = nar(&dir(&[("a", file(b"1")), ("a", file(b"2"))]));
        expect_err(&data, "unsorted or duplicate");
    }

    #[test]
    fn bad_names() {
        for name in [".", "..", "a/b", "/", "a\0b"] {
            let data = nar(&dir(&[(name, file(b""))]));
            assert!(validate(&data).is_err(), "{name:?}");
        }
        expect_err(&nar(&dir(&[("", file(b""))])), "empty entry name");
        let long = "x".repeat(MAX_NAME_BYTES as usize + 1);
        expect_err(&nar(&dir(&[(&long, file(b""))])), "longer than");
        let longest = "x".repeat(MAX_NAME_BYTES as usize);
        assert!(validate(&nar(&dir(&[(&longest, file(b""))]))).is_ok());
        // Names that merely look odd are fine.
        assert!(validate(&nar(&dir(&[
            ("...", file(b"")),
            (".a", file(b"")),
            ("é", file(b""))
        ])))
        .is_ok());
    }

    #[test]
    fn bad_symlink_targets() {
        expect_err(&nar(&Node::Symlink(Vec::new())), "empty symlink target");
        expect_err(&nar(&Node::Symlink(b"a\0b".to_vec())), "NUL");
        let long = vec![b'x'; MAX_TARGET_BYTES as usize + 1];
        expect_err(&nar(&Node::Symlink(long)), "longer than");
        let longest = vec![b'x'; MAX_TARGET_BYTES as usize];
        assert!(validate(&nar(&Node::Symlink(longest))).is_ok());
    }

    #[test]
    fn trailing_garbage() {
        let mut data = real("nested-dirs.nar");
        let len = data.len();
        data.push(0);
        expect_err(&data, &format!("trailing data at byte {len}"));
        // Two archives back to back are not one archive.
        let one = real("regular.nar");
        expect_err(&[one.clone(), one].concat(), "trailing data");
        // Fed separately, the garbage fails in feed.
        let mut v = NarValidator::new();
        v.feed(&real("regular.nar")).unwrap();
        assert!(v.is_complete());
        assert!(v.feed(b"x").is_err());
        assert!(v.finish().is_err());
    }

    #[test]
    fn huge_length_prefixes_are_not_allocated() {
        // A file claiming u64::MAX bytes: feed accepts the claim (it is a valid
        // prefix), finish reports the archive cut short.
        let mut head = strs(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        head.extend_from_slice(&u64::MAX.to_le_bytes());
        head.extend_from_slice(&[7; 100]);
        let mut v = NarValidator::new();
        v.feed(&head).unwrap();
        let err = v.finish().unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
        assert!(v.buf.capacity() < 1024);

        // Names, targets and tokens are judged on their length prefix alone.
        for prefix in [
            strs(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
            ]),
            strs(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]),
            strs(&[b"nix-archive-1", b"(", b"type"]),
            Vec::new(),
        ] {
            let mut data = prefix.clone();
            data.extend_from_slice(&u64::MAX.to_le_bytes());
            let mut v = NarValidator::new();
            assert!(v.feed(&data).is_err());
            assert_eq!(v.bytes_seen(), data.len() as u64);
            assert!(v.buf.capacity() < 1024);
        }
    }

    #[test]
    fn executable_needs_the_empty_string() {
        let data = strs(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"contents",
            b"x",
            b")",
        ]);
        expect_err(&data, "expected \"\"");
        let data = strs(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"contents",
            b"x",
            b")",
        ]);
        assert!(validate(&data).is_ok());
        // "executable" cannot come after "contents".
        let data = strs(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b"executable",
            b"",
            b")",
        ]);
        assert!(validate(&data).is_err());
    }

    #[test]
    fn grammar_violations() {
        for parts in [
            // unknown type
            &[&b"nix-archive-1"[..], b"(", b"type", b"fifo", b")"][..],
            // missing "type"
            &[b"nix-archive-1", b"(", b"regular", b"contents", b"", b")"],
            // entry without "name"
            &[
                b"nix-archive-1",
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"node",
            ],
            // symlink without "target"
            &[b"nix-archive-1", b"(", b"type", b"symlink", b"x", b")"],
            // closing paren missing, something else follows
            &[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"",
                b"(",
            ],
            // a directory with contents
            &[
                b"nix-archive-1",
                b"(",
                b"type",
                b"directory",
                b"contents",
                b"",
            ],
        ] {
            assert!(validate(&strs(parts)).is_err(), "{parts:?}");
        }
    }

    #[test]
    fn depth_limit() {
        let mut node = file(b"");
        for _ in 0..MAX_DEPTH {
            node = dir(&[("d", node)]);
        }
        assert!(validate(&nar(&node)).is_ok());
        expect_err(&nar(&dir(&[("d", node)])), "nested deeper");
    }

    #[test]
    fn errors_stick() {
        let mut v = NarValidator::new();
        let first = v.feed(b"garbage!").unwrap_err();
        assert_eq!(v.feed(&real("regular.nar")).unwrap_err(), first);
        assert_eq!(v.finish().unwrap_err(), first);
        assert_eq!(v.bytes_seen(), 8);
    }

    #[test]
    fn bytes_seen_counts_everything_fed() {
        let data = real("dir-with-3000-byte-file.nar");
        let mut v = NarValidator::new();
        v.feed(&data[..1000]).unwrap();
        assert_eq!(v.bytes_seen(), 1000);
        v.feed(&data[1000..]).unwrap();
        assert_eq!(v.bytes_seen(), data.len() as u64);
    }

    // --- properties ------------------------------------------------------------

    fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..12,
        )
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
                |(executable, contents)| Node::File {
                    executable,
                    contents
                }
            ),
            proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..20)
                .prop_map(Node::Symlink),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            proptest::collection::btree_map(arb_name(), inner, 0..5)
                .prop_map(|m| Node::Dir(m.into_iter().collect()))
        })
    }

    /// A NAR, possibly damaged: one byte overwritten, or cut, or both.
    fn arb_maybe_broken_nar() -> impl Strategy<Value = Vec<u8>> {
        (
            arb_node(),
            proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            proptest::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(|(node, poke, cut)| {
                let mut data = nar(&node);
                if let Some((at, byte)) = poke {
                    let i = at.index(data.len());
                    data[i] = byte;
                }
                if let Some(at) = cut {
                    data.truncate(at.index(data.len() + 1));
                }
                data
            })
    }

    proptest! {
        #[test]
        fn generated_nars_are_valid(node in arb_node()) {
            prop_assert!(validate(&nar(&node)).is_ok());
        }

        #[test]
        fn splitting_never_changes_the_result(
            data in arb_maybe_broken_nar(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(validate_split(&data, &cuts), validate(&data));
        }

        #[test]
        fn splitting_real_nars_never_changes_the_result(
            which in any::<prop::sample::Index>(),
            poke in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let nars = real_nars();
            let mut data = nars[which.index(nars.len())].1.clone();
            if let Some((at, byte)) = poke {
                let i = at.index(data.len());
                data[i] = byte;
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(validate_split(&data, &cuts), validate(&data));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate(&data);
        }
    }
}
