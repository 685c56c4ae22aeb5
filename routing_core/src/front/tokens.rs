//! A prompt's tokens counted in the front, for byte-level BPE tokenizers (GPT-2's family,
//! as SmolLM2's is), read from the model's `tokenizer.json`: the added tokens, then
//! GPT-2's pre-tokenizer, then the BPE merges. Asking the Python app's tokenizer instead
//! held each request for Python's lock: 4 ms of TTFT p50 at 200 streams.
//!
//! Only the configuration below is read; any other makes `from_json` an error, and the
//! front then asks the Python app. Letters are Rust's `char::is_alphabetic`, which GPT-2's
//! `\p{L}` matches except for combining marks some scripts count as letters (a count
//! there may differ by a token or two; it feeds the scorer, a deadline and a key's token
//! charge ahead, which the answer's usage settles).

use std::collections::HashMap;
use std::sync::Mutex;

use lru::LruCache;
use serde_json::Value;

/// Words whose counts are remembered.
const CACHED_WORDS: usize = 10_000;

pub struct ByteLevelBpe {
    ranks: HashMap<String, u32>,
    added: Vec<String>,
    byte_chars: [char; 256],
    counted: Mutex<LruCache<String, usize>>,
}

fn byte_chars() -> [char; 256] {
    // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest for 256 + n.
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in chars.iter_mut().enumerate() {
        let printable = (33..=126).contains(&byte)
            || (161..=172).contains(&byte)
            || (174..=255).contains(&byte);
        let code = if printable {
            byte as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("a valid code point");
    }
    chars
}

fn merge_key(left: &str, right: &str) -> String {
    format!("{left} {right}")
}

impl ByteLevelBpe {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let model = &json["model"];
        let plain = |field: &str| model[field].is_null() || model[field] == Value::from("");
        let supported = model["type"] == "BPE"
            && model["dropout"].is_null()
            && plain("continuing_subword_prefix")
            && plain("end_of_word_suffix")
            && model["byte_fallback"] != Value::Bool(true)
            && model["ignore_merges"] != Value::Bool(true)
            && json["normalizer"].is_null()
            && json["pre_tokenizer"]["type"] == "ByteLevel"
            && json["pre_tokenizer"]["add_prefix_space"] == Value::Bool(false)
            && json["pre_tokenizer"]["use_regex"] == Value::Bool(true);
        if !supported {
            return Err("not a byte-level BPE tokenizer the front reads".to_string());
        }
        let merges = model["merges"].as_array().ok_or("no merges")?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let key = match merge {
                Value::String(pair) => pair.clone(),
                Value::Array(pair) => match (
                    pair.first().and_then(Value::as_str),
                    pair.get(1).and_then(Value::as_str),
                ) {
                    (Some(left), Some(right)) => merge_key(left, right),
                    _ => return Err("a malformed merge".to_string()),
                },
                _ => return Err("a malformed merge".to_string()),
            };
            ranks.insert(key, rank as u32);
        }
        let mut added: Vec<String> = json["added_tokens"]
            .as_array()
            .map(|tokens| {
                tokens
                    .iter()
                    .filter_map(|t| t["content"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        added.sort_by_key(|token| std::cmp::Reverse(token.len())); // the longest match first
        Ok(ByteLevelBpe {
            ranks,
            added,
            byte_chars: byte_chars(),
            counted: Mutex::new(LruCache::new(CACHED_WORDS)),
        })
    }

    /// The tokens of `text` (`encode(text, add_special_tokens=False)`'s length).
    pub fn count(&self, text: &str) -> i64 {
        let mut tokens = 0;
        let mut rest = text;
        while !rest.is_empty() {
            // The next added token, and the text before it.
            let found = rest
                .match_indices(|c| self.added.iter().any(|a| a.starts_with(c)))
                .find_map(|(at, _)| {
                    self.added
                        .iter()
                        .find(|a| rest[at..].starts_with(a.as_str()))
                        .map(|a| (at, a.len()))
                });
            let (before, after) = match found {
                Some((at, length)) => {
                    tokens += 1;
                    (&rest[..at], &rest[at + length..])
                }
                None => (rest, ""),
            };
            for word in pre_tokenize(before) {
                tokens += self.word_tokens(word) as i64;
            }
            rest = after;
        }
        tokens
    }

    fn word_tokens(&self, word: &str) -> usize {
        if let Some(known) = self
            .counted
            .lock()
            .ok()
            .and_then(|mut c| c.get(word).copied())
        {
            return known;
        }
        let mut symbols: Vec<String> = word
            .bytes()
            .map(|b| self.byte_chars[b as usize].to_string())
            .collect();
        loop {
            let best = (0..symbols.len().saturating_sub(1))
                .filter_map(|i| {
                    self.ranks
                        .get(&merge_key(&symbols[i], &symbols[i + 1]))
                        .map(|rank| (*rank, i))
                })
                .min();
            let first = match best {
                Some((_, first)) => first,
                None => break,
            };
            let (left, right) = (symbols[first].clone(), symbols[first + 1].clone());
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    merged.push(format!("{left}{right}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        if let Ok(mut counted) = self.counted.lock() {
            counted.put(word.to_string(), symbols.len());
        }
        symbols.len()
    }
}

/// GPT-2's pre-tokenizer: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |(at, _)| *at);
    let letter = |c: char| c.is_alphabetic();
    let number = |c: char| c.is_numeric();
    let other = |c: char| !c.is_whitespace() && !c.is_alphabetic() && !c.is_numeric();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let c = chars[i].1;
        let run = |from: usize, class: &dyn Fn(char) -> bool| {
            let mut j = from;
            while j < chars.len() && class(chars[j].1) {
                j += 1;
            }
            j
        };
        let contraction = ["s", "t", "re", "ve", "m", "ll", "d"]
            .iter()
            .find(|suffix| c == '\'' && text[end_of(i + 1)..].starts_with(*suffix));
        i = if let Some(suffix) = contraction {
            i + 1 + suffix.chars().count()
        } else {
            let after_space = if c == ' ' { i + 1 } else { i };
            let next = chars.get(after_space).map(|(_, c)| *c);
            match next {
                Some(n) if letter(n) => run(after_space, &letter),
                Some(n) if number(n) => run(after_space, &number),
                Some(n) if other(n) => run(after_space, &other),
                _ => {
                    // Whitespace: all of it at the end, else all but the last, which goes
                    // with the word after it (`\s+(?!\S)`); or one lone character (`\s+`).
                    let j = run(i, &|c: char| c.is_whitespace());
                    if j == chars.len() || j - i == 1 {
                        j
                    } else {
                        j - 1
                    }
                }
            }
        };
        words.push(&text[end_of(start)..end_of(i)]);
    }
    words
}
