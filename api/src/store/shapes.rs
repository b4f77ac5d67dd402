//! The Redis side of the shapes beyond a string: a hash (whole, or chosen
//! fields), set membership, and what a key of another type holds.
//!
//! A hash is read by one read-only script that checks its type and its size
//! before it reads anything, as a batch is: chosen fields are measured with
//! `HSTRLEN`; a whole hash first by its field count (`HLEN`) and by what Redis
//! says it occupies (`MEMORY USAGE … SAMPLES 0`, at most four times
//! `MAX_VALUE_BYTES`: field names have no length command, and this keeps the
//! script's own copy small), then exactly, names and values, before anything
//! is returned. Membership is one `SISMEMBER`: the set itself is never read.

use std::{sync::LazyLock, time::Duration};

use bytes::Bytes;
use fred::{prelude::*, types::Value as RedisValue};

use super::{command, Store, StoreError};

/// KEYS[1] the hash; ARGV[1] the most its names and values may add up to,
/// ARGV[2] the most fields a whole hash may have, ARGV[3…] the fields asked
/// for (none: the whole hash). Replies `{0, {name, value, …}}` (whole) or
/// `{0, {value-or-false, …}}` (chosen), `{1, bytes}` over the byte bound,
/// `{3}` for no such key, `{4, type}` for a key of another type, `{5, fields}`
/// over the field bound.
const HASH_SCRIPT: &str = r#"
local key, max_bytes, max_fields = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local kind = redis.call('TYPE', key)['ok']
if kind == 'none' then return {3} end
if kind ~= 'hash' then return {4, kind} end
if #ARGV == 2 then
  local n = redis.call('HLEN', key)
  if n > max_fields then return {5, n} end
  local used = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0
  if used > 4 * max_bytes then return {1, used} end
  local all = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #all do total = total + #all[i] end
  if total > max_bytes then return {1, total} end
  return {0, all}
end
local total = 0
for i = 3, #ARGV do
  total = total + #ARGV[i] + redis.call('HSTRLEN', key, ARGV[i])
  if total > max_bytes then return {1, total} end
end
-- unpack is bounded by Lua's stack, hence the chunks.
local values = {}
for first = 3, #ARGV, 1000 do
  local some = redis.call('HMGET', key, unpack(ARGV, first, math.min(first + 999, #ARGV)))
  for i = 1, #some do values[#values + 1] = some[i] end
end
return {0, values}
"#;

static HASH_SCRIPT_SHA: LazyLock<String> = LazyLock::new(|| fred::util::sha1_hash(HASH_SCRIPT));

/// What a hash read found.
#[derive(Debug)]
pub enum HashReply {
    /// No such key.
    Missing,
    /// A key of another type, as `TYPE` names it.
    Other(String),
    /// The whole hash: names and values, in Redis's order.
    Whole(Vec<(Bytes, Bytes)>),
    /// The fields asked for, in request order; `None` where there is no such field.
    Chosen(Vec<Option<Bytes>>),
}

/// Why a hash was not read.
#[derive(Debug)]
pub enum HashRefusal {
    /// Its names and values (or the chosen fields' ones) add up to more than allowed.
    Bytes,
    /// It has more fields than `MAX_HASH_FIELDS`.
    Fields,
}

fn bytes_of(value: RedisValue) -> Option<Bytes> {
    match value {
        RedisValue::String(s) => Some(s.into_inner()),
        RedisValue::Bytes(b) => Some(b),
        RedisValue::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

impl Store {
    /// The whole hash (`fields` empty) or the chosen fields, in one round
    /// trip; `max_fields` bounds a whole hash.
    pub async fn hash(
        &self,
        key: &str,
        fields: &[&str],
        max_fields: usize,
    ) -> Result<Result<HashReply, HashRefusal>, StoreError> {
        let mut args = Vec::with_capacity(fields.len() + 2);
        args.push(RedisValue::Integer(self.limits.max_value_bytes as i64));
        args.push(RedisValue::Integer(max_fields as i64));
        args.extend(fields.iter().map(|f| RedisValue::from(*f)));
        let reply = self
            .eval_ro(HASH_SCRIPT, &HASH_SCRIPT_SHA, key, args, self.timeout)
            .await?;
        let RedisValue::Array(mut items) = reply else {
            return Err(self.unexpected("the hash script", &reply));
        };
        let status = items.first().and_then(RedisValue::as_i64);
        match status {
            Some(0) if items.len() == 2 => {
                let RedisValue::Array(values) = items.pop().unwrap_or(RedisValue::Null) else {
                    return Err(self.unexpected("the hash script", &RedisValue::Null));
                };
                if fields.is_empty() {
                    if values.len() % 2 != 0 {
                        return Err(self.unexpected("the hash script", &RedisValue::Null));
                    }
                    let mut pairs = Vec::with_capacity(values.len() / 2);
                    let mut values = values.into_iter();
                    while let (Some(name), Some(value)) = (values.next(), values.next()) {
                        match (bytes_of(name), bytes_of(value)) {
                            (Some(name), Some(value)) => pairs.push((name, value)),
                            _ => return Err(self.unexpected("HGETALL", &RedisValue::Null)),
                        }
                    }
                    Ok(Ok(HashReply::Whole(pairs)))
                } else {
                    if values.len() != fields.len() {
                        return Err(self.unexpected("HMGET", &RedisValue::Null));
                    }
                    Ok(Ok(HashReply::Chosen(
                        values.into_iter().map(bytes_of).collect(),
                    )))
                }
            }
            Some(1) => Ok(Err(HashRefusal::Bytes)),
            Some(3) => Ok(Ok(HashReply::Missing)),
            Some(4) => {
                let kind = items
                    .pop()
                    .and_then(bytes_of)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                Ok(Ok(HashReply::Other(kind)))
            }
            Some(5) => Ok(Err(HashRefusal::Fields)),
            _ => Err(self.unexpected("the hash script", &RedisValue::Array(items))),
        }
    }

    /// Whether `member` is in the set at `key`; a missing key is an empty set
    /// (as Redis answers). `Err(WrongType)` for a key of another type.
    pub async fn is_member(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        self.pool
            .sismember::<bool, _, _>(self.key(key), member)
            .await
            .map_err(|e| self.classify(e, key))
    }

    /// What `key` holds, as `TYPE` names it (`none` when missing), to say
    /// which shape reads it. Only asked after a wrong type.
    pub async fn type_of(&self, key: &str) -> Result<String, StoreError> {
        self.pool
            .next_connected()
            .custom::<String, _>(
                command("TYPE"),
                vec![RedisValue::Bytes(self.key(key).into_bytes())],
            )
            .await
            .map_err(|e| self.classify(e, key))
    }

    /// One read-only script on one key, loaded again if Redis forgot it.
    async fn eval_ro(
        &self,
        script: &'static str,
        sha: &str,
        key: &str,
        argv: Vec<RedisValue>,
        timeout: Duration,
    ) -> Result<RedisValue, StoreError> {
        let args = |script: RedisValue| {
            let mut args = Vec::with_capacity(argv.len() + 3);
            args.push(script);
            args.push(RedisValue::Integer(1));
            args.push(RedisValue::Bytes(self.key(key).into_bytes()));
            args.extend(argv.iter().cloned());
            args
        };
        let client = self.pool.next_connected();
        let call = async {
            match client
                .custom::<RedisValue, _>(command("EVALSHA_RO"), args(RedisValue::from(sha)))
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    client
                        .custom::<RedisValue, _>(command("EVAL_RO"), args(RedisValue::from(script)))
                        .await
                }
                other => other,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply,
            Err(_) => Err(fred::error::Error::new(
                ErrorKind::Timeout,
                "the script did not answer within REDIS_TIMEOUT_MS",
            )),
        }
        .map_err(|e| self.classify(e, key))
    }
}
