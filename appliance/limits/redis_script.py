"""The Lua script behind the Redis limit store: every limit of one org in one call.

Modes: `admit` (budget, token buckets and concurrency slots, all or nothing), `settle`
(bucket adjusts, slot releases and spend of a batch of finished requests), `renew` (push
leases forward) and `fold` (move an org's spend from the key layout before hash tags).
Time is Redis's own (TIME), so replicas with skewed clocks agree. The token-bucket part
repeats bucket.py line by line.

Every key a call names carries the org's hash tag (`rl:{acme}:...`), so on Redis Cluster
the keys of one call share a slot. Arguments and replies are one string of space-separated
fields: redis-py encodes and parses each element of a command or reply in Python, which
costs more than the whole decision in Lua. Numbers travel as "%.17g" (or Python repr)
text: 17 digits round-trip a double exactly.
"""

from __future__ import annotations

import hashlib

BUCKET_LUA = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME + writes
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function fmt(x) return string.format('%.17g', x) end

-- Token buckets: a hash {tokens, ts} per bucket. A call reads each bucket once and writes
-- it once (`flush`, at the end): no time passes within a call, so every later charge or
-- adjust of a bucket in the same call starts from the last one's result, exactly as if
-- that had been stored and read back.
local held, capacities, refills, touched = {}, {}, {}, {}  -- by key; touched: the keys

local function refilled(key, capacity, refill)
  local tokens = held[key]
  if tokens ~= nil then return math.min(capacity, tokens) end
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local updated_at
  tokens, updated_at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or updated_at == nil then return capacity end  -- new or forgotten: full
  local elapsed = math.max(0, now - updated_at)  -- a clock stepping back must not drain
  return math.min(capacity, tokens + elapsed * refill)
end

local function admits(tokens, capacity, cost)
  return tokens >= math.min(cost, capacity)
end

local function seconds_until(tokens, target, refill)
  if tokens >= target then return 0 end
  if refill <= 0 then return math.huge end
  return (target - tokens) / refill
end

local function store(key, tokens, capacity, refill)
  if held[key] == nil then touched[#touched + 1] = key end
  held[key] = math.max(0, tokens)  -- never below empty: no wait beyond one full refill
  capacities[key], refills[key] = capacity, refill
end

local function flush()
  local now_text = fmt(now)
  for _, key in ipairs(touched) do
    local tokens, capacity, refill = held[key], capacities[key], refills[key]
    redis.call('HSET', key, 'tokens', fmt(tokens), 'ts', now_text)
    local to_full = seconds_until(tokens, capacity, refill)
    if to_full == math.huge then
      redis.call('PERSIST', key)
    else  -- forgotten 1 s after it is full again; capped so PEXPIRE gets an integer
      local ttl_ms = math.min(math.ceil(to_full * 1000) + 1000, 1e15)
      redis.call('PEXPIRE', key, string.format('%d', ttl_ms))
    end
  end
end

-- Concurrency slots: a sorted set, member = holder, score = lease expiry (ms).
local function keep_key(key, lease)
  -- The set outlives its longest lease and no more, so idle keys vanish by themselves.
  if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
end

local function slot_free(key, limit, holder)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  if redis.call('ZSCORE', key, holder) or redis.call('ZCARD', key) < limit then return '1' end
  return '0'
end

-- ARGV[2] of every mode is one string of space-separated fields (cheaper to send and to
-- read than one argument per number); replies are one such string too.
local function fields(text)
  local out = {}
  for field in string.gmatch(text, '%S+') do out[#out + 1] = field end
  return out
end

-- admit: fields = holder, lease_ms, nb, ns, nc, budget; then capacity, refill, cost of each
-- of nb enforced and ns shadow buckets; then limit, enforced (1|0) of each of nc slots.
-- KEYS from o + 1 = the buckets, the slots, then the spend key unless budget is "none"
-- (budget < 0: read it, never refuse: a shadow budget). Returns the reply and the number
-- of keys it used. Reply: code, spent, the tokens of each enforced bucket before
-- the charge, then (unless code 2) 1|0 per shadow bucket (charged) and per slot (free).
-- code: 0 admitted, 1 budget (reply ends after spent), 2 rate, 3 concurrency. A refusal
-- charges nothing.
local function admit(f, o)
  local holder, lease = f[1], tonumber(f[2])
  local nb, ns, nc = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
  local used, spent = nb + ns + nc, 0
  if f[6] ~= 'none' then
    used = used + 1
    spent = tonumber(redis.call('GET', KEYS[o + used])) or 0
    local budget = tonumber(f[6])
    if budget >= 0 and spent >= budget then return '1 ' .. fmt(spent), used end
  end
  local reply, tokens = {'0', fmt(spent)}, {}
  for i = 1, nb do
    local a = 4 + 3 * i
    tokens[i] = refilled(KEYS[o + i], tonumber(f[a]), tonumber(f[a + 1]))
    if not admits(tokens[i], tonumber(f[a]), tonumber(f[a + 2])) then reply[1] = '2' end
    reply[2 + i] = fmt(tokens[i])
  end
  if reply[1] == '2' then return table.concat(reply, ' '), used end  -- all or nothing
  local free, first = {}, 7 + 3 * (nb + ns)
  for j = 1, nc do
    local a = first + 2 * (j - 1)
    free[j] = slot_free(KEYS[o + nb + ns + j], tonumber(f[a]), holder)
    if free[j] == '0' and f[a + 1] == '1' then reply[1] = '3' end
  end
  local admitted = reply[1] == '0'
  for i = 1, nb + ns do
    local a = 4 + 3 * i
    local capacity, refill, cost = tonumber(f[a]), tonumber(f[a + 1]), tonumber(f[a + 2])
    if i <= nb then
      if admitted then store(KEYS[o + i], tokens[i] - cost, capacity, refill) end
    else  -- a shadow bucket is charged alone when it admits, and never refuses
      local charged = '0'
      if admitted then
        local t = refilled(KEYS[o + i], capacity, refill)
        if admits(t, capacity, cost) then
          store(KEYS[o + i], t - cost, capacity, refill)
          charged = '1'
        end
      end
      reply[#reply + 1] = charged
    end
  end
  for j = 1, nc do
    local key = KEYS[o + nb + ns + j]
    if admitted and free[j] == '1' then
      redis.call('ZADD', key, now_ms + lease, holder)
      keep_key(key, lease)
    end
    reply[#reply + 1] = free[j]
  end
  return table.concat(reply, ' '), used
end

-- settle: fields = na, nr, nspend; then capacity, refill, delta of each of na adjusts; the
-- holder of each of nr releases; usd, expire_at of each of nspend spend keys. KEYS = the
-- adjusted buckets (a key may repeat: applied in order), the slot sets, the spend keys.
-- Reply: the new total of each spend key.
local function settle(f)
  local na, nr, nspend = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  for i = 1, na do
    local a = 1 + 3 * i
    local capacity, refill = tonumber(f[a]), tonumber(f[a + 1])
    local tokens = refilled(KEYS[i], capacity, refill) + tonumber(f[a + 2])
    store(KEYS[i], math.min(capacity, tokens), capacity, refill)
  end
  local a = 4 + 3 * na
  for j = 1, nr do redis.call('ZREM', KEYS[na + j], f[a + j - 1]) end
  a = a + nr
  local totals = {}
  for k = 1, nspend do
    local key = KEYS[na + nr + k]
    totals[k] = redis.call('INCRBYFLOAT', key, f[a + 2 * k - 2])
    redis.call('EXPIREAT', key, f[a + 2 * k - 1])
  end
  return table.concat(totals, ' ')
end

-- renew: fields = lease_ms, then one holder per key; KEYS = slot sets. Only a live lease
-- moves: a lapsed slot may already belong to someone else. Reply: how many were renewed.
local function renew(f)
  local lease, renewed = tonumber(f[1]), 0
  for i, key in ipairs(KEYS) do
    local expiry = redis.call('ZSCORE', key, f[i + 1])
    if expiry and tonumber(expiry) > now_ms then
      redis.call('ZADD', key, now_ms + lease, f[i + 1])
      keep_key(key, lease)
      renewed = renewed + 1
    end
  end
  return renewed
end

-- fold: KEYS = the spend key without hash tag, the one with it. Adds the first to the
-- second and deletes it; replies with what was moved, or nil.
local function fold()
  local moved = redis.call('GET', KEYS[1])
  if moved then
    redis.call('INCRBYFLOAT', KEYS[2], moved)
    redis.call('DEL', KEYS[1])
  end
  return moved
end

-- admits: several admissions, one per ARGV from ARGV[2], their KEYS one after the other, in
-- turn (each sees the charges of those before it). Reply: their replies, in order.
local function admits_all()
  local replies, o = {}, 0
  for j = 2, #ARGV do
    local reply, used = admit(fields(ARGV[j]), o)
    replies[j - 1], o = reply, o + used
  end
  return replies
end

local modes = {admit = admit, settle = settle, renew = renew, fold = fold}
local reply
if ARGV[1] == 'admits' then
  reply = admits_all()
else
  local mode = modes[ARGV[1]]
  if mode == nil then return redis.error_reply('limits script: unknown mode') end
  reply = mode(fields(ARGV[2] or ''), 0)
end
flush()
return reply
"""

BUCKET_SHA = hashlib.sha1(BUCKET_LUA.encode(), usedforsecurity=False).hexdigest()

__all__ = ["BUCKET_LUA", "BUCKET_SHA"]
