"""The bus's Lua scripts: each does in one round trip (and atomically) what would otherwise
take several commands; their callers are in the modules of each role."""

__all__ = [
    "BREAK_LUA",
    "CLAIM_MANY_LUA",
    "CONVERT_LUA",
    "PUBLISH_LUA",
    "POLL_REPLIES_LUA",
    "READ_LUA",
    "RENEW_LUA",
    "RESPOND_LUA",
    "SEND_LUA",
]

# Stored response, else claim the execution: one atomic step. Checking the store and then
# claiming in two commands let a duplicate delivery slip in between the first execution
# storing its response and dropping its claim, and execute the request a second time.
# For many requests at once (those read together). Per request: KEYS its stored success,
# its stored error for the request's attempt, and its inflight key; ARGV the owner, the
# claim's ttl ms and the stream entry's id ('' when unknown): a claim queued with that very
# entry (``q:<entry id>``, see SEND_LUA) is taken over. A stored success answers every
# attempt; a stored error only its own attempt (its key names the attempt). Returns
# {codes, stored...}: codes has one character per request, 1 (stored: its stored response
# follows, in order), 2 (claimed) or 3 (busy: another consumer holds the claim) — a compact
# reply, cheap to parse.
CLAIM_MANY_LUA = """
local codes, out = {}, {''}
for i = 1, #KEYS / 3 do
  local k = i * 3 - 2  -- three KEYS and three ARGV per request: the same offset in both
  local a = k
  local stored = redis.call('GET', KEYS[k]) or redis.call('GET', KEYS[k + 1])
  if stored then
    codes[#codes + 1] = '1'
    out[#out + 1] = stored
  elseif redis.call('SET', KEYS[k + 2], ARGV[a], 'NX', 'PX', ARGV[a + 1]) then
    codes[#codes + 1] = '2'
  elseif ARGV[a + 2] ~= '' and redis.call('GET', KEYS[k + 2]) == 'q:' .. ARGV[a + 2] then
    -- the claim queued with this very stream entry (SEND_LUA), whose consumer left it: the
    -- stream delivered the entry here, so the claim is here too
    redis.call('SET', KEYS[k + 2], ARGV[a], 'PX', ARGV[a + 1])
    codes[#codes + 1] = '2'
  else
    codes[#codes + 1] = '3'
  end
end
out[1] = table.concat(codes)
return out
"""

# Answer many requests at once; per request, atomically like a MULTI/EXEC: store the response
# (when asked), append it to the requester's reply stream, acknowledge the delivery, drop the
# claim. KEYS per request: where to store the response (its success or its attempt's error
# key), inflight, reply stream, request stream. ARGV: retention s,
# reply maxlen, reply ttl s, then per request: store (1/0), json, signature ('' unsigned), group,
# message id. One request failing (a key of the wrong type) does not stop the others: returns
# {index, error text...} of those that failed (0-based; empty when all went through).
RESPOND_LUA = """
local failed = {}
local retention, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, 3 + i * 5
  local ok, err = pcall(function()
    local raw, sig = ARGV[a + 2], ARGV[a + 3]
    if ARGV[a + 1] == '1' then
      redis.call('SET', KEYS[k + 1], sig .. '|' .. raw, 'EX', retention)
    end
    if sig == '' then
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', maxlen, '*', 'm', raw)
    else
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', maxlen, '*', 'm', raw, 's', sig)
    end
    redis.call('EXPIRE', KEYS[k + 3], ttl)
    redis.call('XACK', KEYS[k + 4], ARGV[a + 4], ARGV[a + 5])
    redis.call('XDEL', KEYS[k + 4], ARGV[a + 5])
    redis.call('DEL', KEYS[k + 2])
  end)
  if not ok then
    failed[#failed + 1] = i
    failed[#failed + 1] = type(err) == 'table' and tostring(err.err) or tostring(err)
  end
end
return failed
"""

# New entries of the request streams (KEYS, highest priority first) for one consumer, up to
# ARGV[3] in all, higher priorities first: one round trip instead of one read per priority.
# ARGV: group, consumer, count. Returns one flat list (cheap to parse): per stream read, its
# name and entry count, then per entry its id and its 'm', 's' and 'c' fields (nil when absent).
READ_LUA = """
local out = {}
local want = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
  local entries = got and got[1] and got[1][2] or {}
  if #entries > 0 then
    out[#out + 1] = key
    out[#out + 1] = #entries
    for _, entry in ipairs(entries) do
      local m, s, c = false, false, false
      local fields = entry[2] or {}
      for j = 1, #fields, 2 do
        local f = fields[j]
        if f == 'm' then m = fields[j + 1] elseif f == 's' then s = fields[j + 1]
        elseif f == 'c' then c = fields[j + 1] end
      end
      out[#out + 1] = entry[1]
      out[#out + 1] = m
      out[#out + 1] = s
      out[#out + 1] = c
    end
    want = want - #entries
    if want <= 0 then break end
  end
end
return out
"""

# Append requests to their streams, one script call for many, each with its execution claim
# when it can have one: a request with no stored answer for its attempt and no claim on it
# gets the claim ``q:<its entry id>`` (ttl: ARGV per request, 0 for none) and the entry the
# field ``c`` = 1, so the consumer the stream delivers that entry to first holds the claim
# without a round trip of its own (it would claim it in the same atomic way: see
# CLAIM_MANY_LUA). KEYS per request: its stream, stored success, stored error for its attempt,
# inflight key. ARGV: the streams' cap, then per request its 'm', 's' ('' when unsigned) and
# the claim's ttl ms. Returns {index, error text...} of those that failed. (Answered entries
# are deleted; the cap only bounds entries nobody answers.)
SEND_LUA = """
local failed = {}
local cap = ARGV[1]
for i = 1, #KEYS / 4 do
  local k, a = i * 4 - 3, i * 3 - 1
  local raw, sig, ttl = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local ok, err = pcall(function()
    local fields = {'m', raw}
    if sig ~= '' then fields[3] = 's'; fields[4] = sig end
    local claim = ttl > 0 and redis.call('EXISTS', KEYS[k + 1], KEYS[k + 2]) == 0
      and redis.call('SET', KEYS[k + 3], 'q', 'NX', 'PX', ttl)
    if claim then fields[#fields + 1] = 'c'; fields[#fields + 1] = '1' end
    local id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', cap, '*', unpack(fields))
    if claim then redis.call('SET', KEYS[k + 3], 'q:' .. id, 'PX', ttl) end
  end)
  if not ok then
    failed[#failed + 1] = i - 1
    failed[#failed + 1] = type(err) == 'table' and tostring(err.err) or tostring(err)
  end
end
return failed
"""

# Make claims queued with their entries (``q:<entry id>``, KEYS) their consumer's own (ARGV[i])
# for ARGV[#KEYS * 2 + 1] ms, where still queued (ARGV[#KEYS + i]): returns the 1-based
# indexes of those that were not.
CONVERT_LUA = """
local lost = {}
local n = #KEYS
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[n + i] then
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ARGV[2 * n + 1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# The replies after ARGV[1] on a reply stream (KEYS[1]), up to ARGV[2], without blocking; the
# entries up to ARGV[1] (read already) are trimmed off. Returns one flat list, cheap to parse:
# the id of the last entry, then each entry's 'm' and 's' fields (nil when absent); empty when
# there is nothing new.
POLL_REPLIES_LUA = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local got = redis.call('XREAD', 'COUNT', ARGV[2], 'STREAMS', KEYS[1], ARGV[1])
local entries = got and got[1] and got[1][2] or {}
if #entries == 0 then return {} end
local out = {entries[#entries][1]}
for _, entry in ipairs(entries) do
  local m, s = false, false
  local fields = entry[2] or {}
  for j = 1, #fields, 2 do
    if fields[j] == 'm' then m = fields[j + 1] elseif fields[j] == 's' then s = fields[j + 1] end
  end
  out[#out + 1] = m
  out[#out + 1] = s
end
return out
"""

# Extend the claims (KEYS) still held by their owners (ARGV[i]) to ARGV[#KEYS + 1] ms.
RENEW_LUA = """
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[#KEYS + 1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

BREAK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Append events to the events stream (KEYS[1]), in order, in one command: ARGV[1] is the
# stream's cap, then per event its 'm' and 's' ('' when unsigned) fields.
PUBLISH_LUA = """
local cap = ARGV[1]
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'm', ARGV[i])
  else redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'm', ARGV[i], 's', ARGV[i + 1]) end
end
return (#ARGV - 1) / 2
"""
