//! A small validating JSON reader for Consul's health answers.
//!
//! Why not serde_json alone: a health answer of 10,000 instances is about
//! 10 MB, of which discovery needs perhaps 5% (node name and address, service
//! ID, address, port, tags, meta, weights, check statuses). Through serde's
//! derive every skipped field still costs a key match, a visitor call and an
//! `IgnoredAny` walk. This reader lets the parser pull the few fields it needs
//! and skip everything else with a tight scanner (eight bytes at a time through
//! strings), while still checking the whole body against the JSON grammar
//! (RFC 8259), so a garbage body is a typed error naming what was wrong and
//! where, never a half-read answer.
//!
//! Objects that come in a repeated shape (the entries of an answer) are read
//! through a [`Shape`]: names and skipped members that repeat the previous
//! object's text are recognized by comparison instead of being scanned
//! again (see [`Reader::member`]).
//!
//! It follows serde_json where the two could disagree: the same whitespace,
//! escapes (paired surrogates in strings that are read), number grammar,
//! integer ranges, and nesting limit (128).

use std::borrow::Cow;
use std::fmt;

/// How deep arrays and objects may nest, as in serde_json.
const MAX_DEPTH: u32 = 128;

/// A health answer that is not the JSON Consul sends: what was wrong and at
/// which byte offset of the body.
///
/// The source of a [`DiscoveryError`](crate::DiscoveryError) of kind
/// [`Decode`](crate::ErrorKind::Decode); find it with `downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJson {
    offset: usize,
    reason: Cow<'static, str>,
}

impl InvalidJson {
    pub(crate) fn new(offset: usize, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            offset,
            reason: reason.into(),
        }
    }

    /// The byte offset in the body where reading stopped.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong (`"expected ',' or '}'"`, `"missing field `Node`"`, ...).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for InvalidJson {}

pub(crate) type Result<T> = std::result::Result<T, InvalidJson>;

/// The member names of the last object of one kind, for [`Reader::member`]:
/// each as it appeared in the text, `"Name":` for the first member and
/// `,"Name":` for the others.
#[derive(Debug, Default)]
pub(crate) struct Shape<'a> {
    names: Vec<Seen<'a>>,
    /// The index of the next member in the current object.
    at: usize,
    /// Where the member last read began (its `,`, or its name's `"`).
    member_start: usize,
}

/// One remembered member name, with the words [`Seen::is_at`] compares.
#[derive(Debug, Clone, Copy)]
struct Seen<'a> {
    text: &'a [u8],
    /// The first, second and last eight bytes of `text` (four when shorter
    /// than eight; the words overlap when it is shorter than 24).
    head: u64,
    mid: u64,
    tail: u64,
    /// The whole member, name and value, when the caller skipped its value
    /// (see [`Reader::skip_member`]) and a `,` or `}` followed it.
    skipped: Option<&'a [u8]>,
}

/// The little-endian word of the `N` (4 or 8) bytes at `at`, if there are.
#[inline]
fn word<const N: usize>(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; N] = b.get(at..at.checked_add(N)?)?.try_into().ok()?;
    let mut w = [0; 8];
    w[..N].copy_from_slice(&bytes);
    Some(u64::from_le_bytes(w))
}

impl<'a> Seen<'a> {
    fn new(text: &'a [u8]) -> Self {
        let n = text.len();
        let (head, mid, tail) = if n >= 8 {
            let mid = if n > 16 { 8 } else { n - 8 };
            (
                word::<8>(text, 0),
                word::<8>(text, mid),
                word::<8>(text, n - 8),
            )
        } else if n >= 4 {
            (
                word::<4>(text, 0),
                word::<4>(text, 0),
                word::<4>(text, n - 4),
            )
        } else {
            (None, None, None)
        };
        Self {
            text,
            head: head.unwrap_or(0),
            mid: mid.unwrap_or(0),
            tail: tail.unwrap_or(0),
            skipped: None,
        }
    }

    /// True when `b` repeats this name at `at`: two or three word
    /// comparisons for names up to 24 bytes, no call to `memcmp`.
    #[inline]
    fn is_at(&self, b: &[u8], at: usize) -> bool {
        let n = self.text.len();
        if n >= 8 {
            let mid = if n > 16 { 8 } else { n - 8 };
            word::<8>(b, at) == Some(self.head)
                && word::<8>(b, at + n - 8) == Some(self.tail)
                && word::<8>(b, at + mid) == Some(self.mid)
                && (n <= 24 || b.get(at + 16..at + n - 8) == Some(&self.text[16..n - 8]))
        } else if n >= 4 {
            word::<4>(b, at) == Some(self.head) && word::<4>(b, at + n - 4) == Some(self.tail)
        } else {
            b.get(at..).is_some_and(|rest| rest.starts_with(self.text))
        }
    }
}

impl Shape<'_> {
    /// Before the first member of an object.
    #[inline]
    pub(crate) fn start(&mut self) {
        self.at = 0;
    }
}

/// A cursor over a JSON text that is already known to be valid UTF-8.
pub(crate) struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    pub(crate) fn error(&self, reason: impl Into<Cow<'static, str>>) -> InvalidJson {
        InvalidJson::new(self.pos, reason)
    }

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not whitespace, without consuming it.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    /// Consumes `want` (after whitespace) or fails with `reason`.
    #[inline]
    pub(crate) fn expect(&mut self, want: u8, reason: &'static str) -> Result<()> {
        match self.peek() {
            Some(c) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error(reason)),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// Consumes a `null` if one comes next.
    #[inline]
    pub(crate) fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn literal(&mut self, word: &'static str) -> Result<()> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    /// After the opening bracket or the previous element: true when another
    /// element follows (its `,` consumed), false at the closing `close`.
    #[inline]
    pub(crate) fn more(&mut self, first: &mut bool, close: u8) -> Result<bool> {
        match self.peek() {
            Some(c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !*first => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if *first => {
                *first = false;
                Ok(true)
            }
            Some(_) if close == b']' => Err(self.error("expected ',' or ']'")),
            Some(_) => Err(self.error("expected ',' or '}'")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// The next member name of an object and its `:`, as bytes, or `None` at
    /// the closing `}`.
    ///
    /// One pass over `,`, the name and `:`: this runs for every member of
    /// every object discovery reads (about fifty per instance).
    #[inline]
    pub(crate) fn name(&mut self, first: &mut bool) -> Result<Option<Cow<'a, [u8]>>> {
        if !self.more(first, b'}')? {
            return Ok(None);
        }
        let b = self.bytes();
        let at = self.pos;
        if b.get(at) == Some(&b'"') {
            let end = self.string_run(at + 1);
            // The common case: no escape, and `:` right after the name.
            if b.get(end) == Some(&b'"') && b.get(end + 1) == Some(&b':') {
                self.pos = end + 2;
                return Ok(Some(Cow::Borrowed(&b[at + 1..end])));
            }
        }
        Ok(Some(match self.key_rest()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }))
    }

    /// [`Reader::name`] for objects that come in a repeated shape, such as
    /// the 10,000 entries of a health answer: `shape` remembers the member
    /// names of the previous object of its kind, each with the `,` before it
    /// and the `:` after it, exactly as they appeared. When the text at the
    /// cursor repeats the name expected at this position, one comparison
    /// reads it: that name was already checked to be a plain string (no
    /// escape, no control character), so the repeated bytes are one too.
    /// Anything else takes [`Reader::name`]'s path and updates the shape.
    ///
    /// A member whose value the caller skipped last time with
    /// [`Reader::skip_member`] and that repeats byte for byte (name, value,
    /// and a `,` or `}` after it) is passed over without returning it: many
    /// members of a health answer repeat from instance to instance
    /// (`"Datacenter":"dc1"`, `"Notes":""`, `"Type":"http"`, ...). The bytes
    /// are the same valid JSON, at the same nesting level, as those checked
    /// the first time.
    ///
    /// Call [`Shape::start`] before the first member of each object.
    #[inline]
    pub(crate) fn member(
        &mut self,
        first: &mut bool,
        shape: &mut Shape<'a>,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let b = self.bytes();
        while let Some(seen) = shape.names.get(shape.at) {
            if let Some(whole) = seen.skipped {
                let end = self.pos + whole.len();
                if matches!(b.get(end), Some(b',' | b'}')) && b.get(self.pos..end) == Some(whole) {
                    self.pos = end;
                    *first = false;
                    shape.at += 1;
                    continue;
                }
            }
            if !seen.is_at(b, self.pos) {
                break;
            }
            shape.member_start = self.pos;
            let seen = seen.text;
            self.pos += seen.len();
            *first = false;
            shape.at += 1;
            let lead = usize::from(seen[0] == b',') + 1;
            return Ok(Some(Cow::Borrowed(&seen[lead..seen.len() - 2])));
        }
        // The closing brace right away (after `{` or a value alike).
        if b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(None);
        }
        shape.member_start = self.pos;
        self.member_slow(first, shape)
    }

    /// True, with the value consumed, when the value at the cursor is
    /// exactly `seen` followed by a `,`, `}` or `]`; `seen` is the text of a
    /// value read (and so checked) before in the same place of the same
    /// shape of object, so reading it again would give the same result. An
    /// empty `seen` never matches.
    #[inline]
    pub(crate) fn repeats(&mut self, seen: &[u8]) -> bool {
        let b = self.bytes();
        let end = self.pos + seen.len();
        if !seen.is_empty()
            && matches!(b.get(end), Some(b',' | b'}' | b']'))
            && b.get(self.pos..end) == Some(seen)
        {
            self.pos = end;
            return true;
        }
        false
    }

    /// Reads the value at the cursor with `read`, unless it [`repeats`]
    /// `text`, the text of the value `read` last read here; then `text` is
    /// the text of this value. What `read` stored from the repeated text
    /// still holds, so a repeat is passed over with one comparison.
    ///
    /// [`repeats`]: Reader::repeats
    #[inline]
    pub(crate) fn unless_repeated(
        &mut self,
        text: &mut &'a [u8],
        read: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        if self.repeats(text) {
            return Ok(());
        }
        self.peek();
        let start = self.pos;
        read(self)?;
        *text = &self.bytes()[start..self.pos];
        Ok(())
    }

    /// Skips the value of the member [`Reader::member`] just returned, as
    /// [`Reader::skip`] does, and remembers the whole member so that
    /// `member` can pass over an exact repeat of it.
    #[inline]
    pub(crate) fn skip_member(&mut self, depth: u32, shape: &mut Shape<'a>) -> Result<()> {
        self.skip(depth)?;
        let b = self.bytes();
        let end = self.pos;
        // The member just read is `names[at - 1]` when it was remembered
        // (`member_slow` drops what it cannot remember).
        if let Some(seen) = shape.at.checked_sub(1).and_then(|i| shape.names.get_mut(i)) {
            seen.skipped =
                matches!(b.get(end), Some(b',' | b'}')).then(|| &b[shape.member_start..end]);
        }
        Ok(())
    }

    fn member_slow(
        &mut self,
        first: &mut bool,
        shape: &mut Shape<'a>,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let comma = usize::from(!*first);
        let start = self.pos;
        let name = self.name(first)?;
        let Some(name) = name else {
            return Ok(None);
        };
        let span = &self.bytes()[start..self.pos];
        // Remembered only when written without whitespace, escapes or
        // anything else between `,` and `:`.
        let plain = matches!(name, Cow::Borrowed(_))
            && span.len() == comma + name.len() + 3
            && span[comma] == b'"';
        let at = shape.at;
        shape.at += 1;
        if plain && at < shape.names.len() {
            shape.names[at] = Seen::new(span);
        } else if plain && at == shape.names.len() {
            shape.names.push(Seen::new(span));
        } else if at < shape.names.len() {
            shape.names.truncate(at);
        }
        Ok(Some(name))
    }

    /// The next key of an object and its `:`, or `None` at the closing `}`.
    #[inline]
    pub(crate) fn key(&mut self, first: &mut bool) -> Result<Option<Cow<'a, str>>> {
        if !self.more(first, b'}')? {
            return Ok(None);
        }
        self.key_rest().map(Some)
    }

    fn key_rest(&mut self) -> Result<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.string()?;
        self.expect(b':', "expected ':'")?;
        Ok(key)
    }

    /// A string, borrowed from the text unless it holds escapes.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>> {
        match self.peek() {
            Some(b'"') => {}
            Some(_) => return Err(self.error("expected a string")),
            None => return Err(self.error("unexpected end of input")),
        }
        let start = self.pos + 1;
        let end = self.string_run(start);
        self.pos = end;
        if self.bytes().get(end) == Some(&b'"') {
            self.pos += 1;
            return Ok(Cow::Borrowed(&self.text[start..end]));
        }
        self.escaped_string(start)
    }

    /// The rest of [`Reader::string`] for a string that holds escapes (or is
    /// broken): `start` is its first byte, the cursor where the fast scan
    /// stopped.
    #[cold]
    fn escaped_string(&mut self, start: usize) -> Result<Cow<'a, str>> {
        let mut out = self.text[start..self.pos].to_owned();
        self.escaped_tail(&mut out)?;
        Ok(Cow::Owned(out))
    }

    /// Reads the rest of a string that holds escapes into `out`, through the
    /// closing quote.
    fn escaped_tail(&mut self, out: &mut String) -> Result<()> {
        loop {
            match self.bytes().get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape(true)?;
                    out.push(c.unwrap_or('\u{fffd}'));
                }
                Some(_) => {
                    self.control_check()?;
                    let end = self.string_run(self.pos);
                    out.push_str(&self.text[self.pos..end]);
                    self.pos = end;
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// Fails on a raw control character at the cursor.
    fn control_check(&self) -> Result<()> {
        match self.bytes().get(self.pos) {
            Some(&c) if c < 0x20 => Err(self.error("control character in a string")),
            _ => Ok(()),
        }
    }

    /// The escape after a `\`. With `decode`, returns the character (a
    /// `\u` escape must then be a whole code point, surrogates paired, as
    /// serde_json requires of strings it reads); otherwise only checks the
    /// form, as serde_json does for strings it skips.
    fn escape(&mut self, decode: bool) -> Result<Option<char>> {
        let Some(&c) = self.bytes().get(self.pos) else {
            return Err(self.error("unterminated string"));
        };
        self.pos += 1;
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(decode),
            _ => {
                self.pos -= 1;
                return Err(self.error("invalid escape in a string"));
            }
        };
        Ok(Some(simple))
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes().get(self.pos..self.pos + 4);
        let value = digits.and_then(|d| {
            d.iter()
                .try_fold(0u32, |acc, &h| Some(acc * 16 + (h as char).to_digit(16)?))
        });
        match value {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => Err(self.error("invalid \\u escape in a string")),
        }
    }

    fn unicode_escape(&mut self, decode: bool) -> Result<Option<char>> {
        let n = self.hex4()?;
        if !decode {
            return Ok(None);
        }
        if (0xDC00..=0xDFFF).contains(&n) {
            return Err(self.error("lone surrogate in a \\u escape"));
        }
        if !(0xD800..=0xDBFF).contains(&n) {
            return Ok(char::from_u32(n));
        }
        if !self.bytes()[self.pos..].starts_with(b"\\u") {
            return Err(self.error("lone surrogate in a \\u escape"));
        }
        self.pos += 2;
        let low = self.hex4()?;
        if !(0xDC00..=0xDFFF).contains(&low) {
            return Err(self.error("lone surrogate in a \\u escape"));
        }
        Ok(char::from_u32(
            0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00),
        ))
    }

    /// The index of the first `"`, `\` or control character at or after
    /// `from` (or the end of the text): eight bytes per step.
    #[inline]
    fn string_run(&self, mut from: usize) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let b = self.bytes();
        while let Some(chunk) = b.get(from..from + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            // The classic "has a zero byte" test; its lowest set bit is exact.
            let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
            let hit = zero(x ^ (ONES * u64::from(b'"')))
                | zero(x ^ (ONES * u64::from(b'\\')))
                | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
            if hit != 0 {
                return from + (hit.trailing_zeros() / 8) as usize;
            }
            from += 8;
        }
        while let Some(&c) = b.get(from) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return from;
            }
            from += 1;
        }
        from
    }

    /// Skips the string that opens at `at`, checking its escapes; returns
    /// the index after its closing quote.
    #[inline]
    fn skip_string_at(&self, at: usize) -> Result<usize> {
        let b = self.bytes();
        let mut i = at + 1; // the opening quote
        loop {
            i = self.string_run(i);
            match b.get(i) {
                Some(b'"') => return Ok(i + 1),
                Some(b'\\') => i = self.skip_escape(i + 1)?,
                Some(_) => return Err(InvalidJson::new(i, "control character in a string")),
                None => return Err(InvalidJson::new(i, "unterminated string")),
            }
        }
    }

    /// Checks the escape after a `\` at `at` - 1 without decoding it, as
    /// serde_json does for strings it skips; returns the index after it.
    #[cold]
    fn skip_escape(&self, at: usize) -> Result<usize> {
        let mut r = Reader {
            text: self.text,
            pos: at,
        };
        r.escape(false)?;
        Ok(r.pos)
    }

    /// An unsigned integer that fits in `max`, as serde_json reads `u16` and
    /// `u32`: no sign, fraction or exponent, no leading zero.
    pub(crate) fn unsigned(&mut self, max: u64) -> Result<u64> {
        let start = match self.peek() {
            Some(b'0'..=b'9') => self.pos,
            Some(b'-') => return Err(self.error("expected an unsigned integer")),
            Some(_) => return Err(self.error("expected an unsigned integer")),
            None => return Err(self.error("unexpected end of input")),
        };
        let b = self.bytes();
        let mut value: u64 = 0;
        let mut end = start;
        while let Some(&c @ b'0'..=b'9') = b.get(end) {
            value = value.saturating_mul(10).saturating_add(u64::from(c - b'0'));
            end += 1;
        }
        if b[start] == b'0' && end > start + 1 {
            return Err(self.error("invalid number (leading zero)"));
        }
        if matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
            return Err(self.error("expected an integer, found a fraction or exponent"));
        }
        if value > max {
            return Err(self.error(format!("integer out of range (at most {max})")));
        }
        self.pos = end;
        Ok(value)
    }

    fn skip_number(&mut self) -> Result<()> {
        let b = self.bytes();
        let mut i = self.pos;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i + 1),
            _ => {
                self.pos = i;
                return Err(self.error("invalid number"));
            }
        }
        if b.get(i).is_some_and(u8::is_ascii_digit) {
            self.pos = i;
            return Err(self.error("invalid number (leading zero)"));
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                self.pos = end;
                return Err(self.error("invalid number (no digit after '.')"));
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(i);
            if end == i {
                self.pos = end;
                return Err(self.error("invalid number (no digit in the exponent)"));
            }
            i = end;
        }
        self.pos = i;
        Ok(())
    }

    /// Skips one value of any kind, checking it. `depth` is the nesting level
    /// a container here would have (the top level is 1).
    #[inline]
    pub(crate) fn skip(&mut self, depth: u32) -> Result<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos = self.skip_string_at(self.pos)?;
                Ok(())
            }
            Some(b'{' | b'[') => self.skip_container(depth),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// Skips the array or object at the cursor: no recursion (a bit stack
    /// of open containers), every byte outside strings looked at once, and
    /// each byte handled by the code for what may come there (a value, a
    /// key, what follows a value) rather than a state dispatched per byte.
    fn skip_container(&mut self, depth: u32) -> Result<()> {
        let b = self.bytes();
        let err = |i: usize, why: &'static str| Err(InvalidJson::new(i, why));
        // Bit `n` set: the container at relative level `n + 1` is an object.
        let mut objects: u128 = 0;
        let mut level: u32 = 0;
        // `i` is where a value may start (whitespace skipped).
        let mut i = self.pos;
        loop {
            let Some(&c) = b.get(i) else {
                return err(i, "unexpected end of input");
            };
            match c {
                b'"' => i = self.skip_string_at(i)?,
                b'{' | b'[' => {
                    if depth + level >= MAX_DEPTH {
                        return err(i, "nested too deeply");
                    }
                    let object = c == b'{';
                    if object {
                        objects |= 1 << level;
                    } else {
                        objects &= !(1 << level);
                    }
                    level += 1;
                    i = skip_ws(b, i + 1);
                    let close = if object { b'}' } else { b']' };
                    match b.get(i) {
                        Some(&c) if c == close => {
                            // An empty container: a value that just ended.
                            i += 1;
                            level -= 1;
                            if level == 0 {
                                self.pos = i;
                                return Ok(());
                            }
                        }
                        Some(_) if object => {
                            i = self.skip_key(i)?;
                            continue;
                        }
                        Some(_) => continue,
                        None => return err(i, "unexpected end of input"),
                    }
                }
                _ => {
                    self.pos = i;
                    match c {
                        b't' => self.literal("true")?,
                        b'f' => self.literal("false")?,
                        b'n' => self.literal("null")?,
                        b'-' | b'0'..=b'9' => self.skip_number()?,
                        _ => return Err(self.error("expected a JSON value")),
                    }
                    i = self.pos;
                }
            }
            // After a value: a `,` and the next member or element, or the
            // closing bracket (and then the same question one level up).
            loop {
                i = skip_ws(b, i);
                let in_object = objects & (1 << (level - 1)) != 0;
                match b.get(i) {
                    Some(b',') => {
                        i = skip_ws(b, i + 1);
                        if in_object {
                            i = self.skip_key(i)?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    Some(_) if in_object => return err(i, "expected ',' or '}'"),
                    Some(_) => return err(i, "expected ',' or ']'"),
                    None => return err(i, "unexpected end of input"),
                }
                i += 1;
                level -= 1;
                if level == 0 {
                    self.pos = i;
                    return Ok(());
                }
            }
        }
    }

    /// Skips an object key at `i` and its `:`; returns where its value may
    /// start (whitespace skipped).
    #[inline]
    fn skip_key(&self, i: usize) -> Result<usize> {
        let b = self.bytes();
        match b.get(i) {
            Some(b'"') => {}
            Some(_) => return Err(InvalidJson::new(i, "expected a string key")),
            None => return Err(InvalidJson::new(i, "unexpected end of input")),
        }
        let i = skip_ws(b, self.skip_string_at(i)?);
        match b.get(i) {
            Some(b':') => Ok(skip_ws(b, i + 1)),
            Some(_) => Err(InvalidJson::new(i, "expected ':'")),
            None => Err(InvalidJson::new(i, "unexpected end of input")),
        }
    }

    /// Fails unless only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters after the JSON value")),
        }
    }
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(text: &str) -> Result<()> {
        let mut r = Reader::new(text);
        r.skip(1)?;
        r.end()
    }

    #[test]
    fn skips_exactly_what_serde_json_accepts() {
        let cases = [
            r#"{"a":[1,-2.5e+3,0,0.0,1E9,true,false,null,"x\"\\\/\b\f\n\r\tq\u00e9"],"b":{}}"#,
            " [ ] ",
            r#""\ud83d\ude00""#,
            "-0",
            "[01]",
            "[1.]",
            "[1e]",
            "[-]",
            "[.5]",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            r#"{1:2}"#,
            "\"a\u{1}b\"",
            r#""\x""#,
            r#""\u12g4""#,
            "tru",
            "nul",
            "[",
            "\"abc",
            "1 2",
            "",
            "{\"é\":\"ü\"}",
            // Containers in every position, and every way to break them.
            r#"{"a":[],"b":{},"c":[{}],"d":{"e":[{"f":[]}]}}"#,
            " { \"a\" : 1 , \"b\" : [ 1 , 2 ] } ",
            r#"{"a":1,"b"}"#,
            r#"{"a":}"#,
            "[}",
            "{]",
            r#"{"a":1]"#,
            "[1}",
            "{,}",
            "[,]",
            "[[],]",
            r#"{"a":[]"#,
            r#"{"a""#,
            "[[",
            "{\"a\":1,",
            // Past the first chunks of the fast scan.
            "\"0123456789abcdefghijklmnop\u{1}x\"",
            "\"0123456789abcdefghijklmnop\\\\x\"",
            "\"0123456789abcdefghijklmnop\\qx\"",
            "\"0123456789abcdefghijklmnop",
        ];
        for text in cases {
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(skip_all(text).is_ok(), serde_ok, "{text:?}");
        }
    }

    /// The names and value texts of an object's members that were read.
    type Kept = Vec<(Vec<u8>, String)>;

    /// The members of the objects in `text` whose names do not start with
    /// `s`, with their values' text, read with [`Reader::name`] and
    /// [`Reader::skip`], or with [`Reader::member`] and
    /// [`Reader::skip_member`] and one shape carried from object to object
    /// (members starting with `s` are the ones "skipped").
    fn members(text: &str, shaped: bool) -> Vec<Result<Kept>> {
        let mut r = Reader::new(text);
        let mut shape = Shape::default();
        let mut out = Vec::new();
        while r.peek().is_some() {
            let mut object = || {
                r.expect(b'{', "expected an object")?;
                let mut kept = Vec::new();
                let mut first = true;
                shape.start();
                loop {
                    let name = if shaped {
                        r.member(&mut first, &mut shape)?
                    } else {
                        r.name(&mut first)?
                    };
                    let Some(name) = name else {
                        return Ok(kept);
                    };
                    if name.starts_with(b"s") {
                        if shaped {
                            r.skip_member(2, &mut shape)?;
                        } else {
                            r.skip(2)?;
                        }
                        continue;
                    }
                    r.peek();
                    let start = r.pos;
                    r.skip(2)?;
                    kept.push((name.into_owned(), text[start..r.pos].to_owned()));
                }
            };
            let object = object();
            let failed = object.is_err();
            out.push(object);
            if failed {
                break;
            }
        }
        out
    }

    #[test]
    fn members_read_like_names_whatever_the_shape() {
        let long =
            r#"{"Node":1,"ID":2,"TaggedAddresses":3,"AVeryLongMemberNameIndeed_xyz":4,"":5,"a":6}"#;
        let skipped =
            r#"{"s1":"dc1","Node":"n","s2":5,"s3":{"a":[1,{"b":null}]},"s4":[],"s5":true}"#;
        let objects = [
            long,
            long,
            r#"{"Node":1,"IDx":2,"TaggedAddresseS":3,"AVeryLongMemberNameIndeed_xyZ":4,"b":5,"":6}"#,
            long,
            r#"{"Node":1,"ID":2,"TaggedAddresses":3}"#,
            long,
            r#"{ "Node" : 1 , "ID":2,"TaggedAddresses" :3}"#,
            r#"{"Node":1,"ID":2,"TaggedAddresses":3}"#,
            r#"{"No\u0064e":1,"I\"D":2,"TaggedAddresses":3}"#,
            r#"{"Node":1,"ID\"":2}"#,
            "{}",
            r#"{"Node":1}"#,
            skipped,
            skipped,
            r#"{"s1":"dc1","Node":"m","s2":50,"s3":{"a":[1,{"b":null}]},"s4":[],"s5":true}"#,
            skipped,
            r#"{"s1":"dc1","Node":"n","s2":5,"s3":{"a":[1,{"b":null}]},"s4":[] ,"s5":true}"#,
            skipped,
            r#"{"s1":"dc1","Node":"n","s2":5,"s3":{"a":[1,{"b":null}]},"s4":[],"s5":truer}"#,
        ];
        let text = objects.join(" ");
        let plain = members(&text, false);
        assert_eq!(plain.len(), objects.len());
        assert!(plain[..plain.len() - 1].iter().all(Result::is_ok));
        assert!(plain[plain.len() - 1].is_err());
        assert_eq!(members(&text, true), plain);
        for end in [long, skipped] {
            // A repeat of the last shape, cut anywhere.
            let text = format!("{skipped} {long} {skipped} {long}");
            for cut in 1..end.len() {
                let text = format!("{text} {}", &end[..cut]);
                assert_eq!(members(&text, true), members(&text, false), "{text}");
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        let e = skip_all(&deep).unwrap_err();
        assert_eq!(e.reason(), "nested too deeply");
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        skip_all(&ok).unwrap();
    }

    #[test]
    fn strings_decode_like_serde_json() {
        for text in [
            r#""plain""#,
            r#""tab\there \"q\" \\ \/ \u00e9 \ud83d\ude00 end""#,
            r#""a long string that crosses several eight-byte chunks \n and ends""#,
            "\"été\"",
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83dx""#,
            r#""\ud83d\u0041""#,
        ] {
            let want = serde_json::from_str::<String>(text).ok();
            let got = Reader::new(text).string().ok().map(Cow::into_owned);
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn unsigned_follows_serde_json() {
        for text in [
            "0", "8080", "65535", "65536", "-1", "-0", "08", "1.0", "1e3", "x",
        ] {
            let want = serde_json::from_str::<u16>(text).ok();
            let mut r = Reader::new(text);
            let got = r.unsigned(u64::from(u16::MAX)).ok().and_then(|v| {
                r.end().ok()?;
                u16::try_from(v).ok()
            });
            assert_eq!(got, want, "{text:?}");
        }
        let huge = "99999999999999999999999";
        assert!(Reader::new(huge).unsigned(u64::from(u32::MAX)).is_err());
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = skip_all(r#"{"a":1 "b":2}"#).unwrap_err();
        assert_eq!(e.to_string(), "expected ',' or '}' at byte 7");
        assert_eq!(e.offset(), 7);
    }
}
