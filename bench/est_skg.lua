-- wrk script for bench_skg: POST /serverkeygen with Basic auth, a different
-- CSR on each request. The same request sent again is matched in the ledger
-- (an encrypted answer is sent again, a plaintext one supersedes the earlier,
-- and two at once are told to retry), so one CSR would not measure key
-- generation. Thread i starts at its own place in the file and goes round.
--
-- wrk ... -s est_skg.lua URL -- CSR_FILE AUTH_FILE KEY_PART
--   CSR_FILE   one base64 DER CSR per line
--   AUTH_FILE  one line: base64 of user:password
--   KEY_PART   text the key part's Content-Type must contain: "application/pkcs8"
--              (plaintext) or "server-generated-key" (encrypted), so that an
--              answer in the wrong mode counts as refused
--
-- done() prints one line, latencies in microseconds:
-- "est_skg: ok=N refused=N first_refused=S duration_us=N p50_us=N p99_us=N max_us=N
--  connect=N read=N write=N timeout=N"

local threads = {}

-- Per thread state, read by done() through thread:get, so globals.
ok_count = 0
refused = 0
first_refused = 0

local csrs = {}
local next_csr = 1
local headers, key_part

function setup(thread)
   thread:set("id", #threads)
   threads[#threads + 1] = thread
end

local function first_line(path)
   local f = assert(io.open(path, "r"))
   local line = f:read("*l")
   f:close()
   return line
end

function init(args)
   for line in io.lines(args[1]) do
      csrs[#csrs + 1] = line
   end
   -- threads far apart in the file, so that two never send the same CSR at once, and
   -- each run (a new wrk, seconds after the last) somewhere else again
   next_csr = (id * 20011 + os.time() * 4099) % #csrs + 1
   key_part = args[3]
   headers = {
      ["Content-Type"] = "application/pkcs10",
      ["Authorization"] = "Basic " .. first_line(args[2]),
   }
end

function request()
   local body = csrs[next_csr]
   next_csr = next_csr % #csrs + 1
   return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, resp)
   if status == 200 and resp ~= nil and string.find(resp, key_part, 1, true) then
      ok_count = ok_count + 1
   else
      refused = refused + 1
      if first_refused == 0 then
         first_refused = status == 200 and -1 or status
      end
   end
end

function done(summary, latency, requests)
   local ok, bad, first = 0, 0, 0
   local e = summary.errors

   for _, t in ipairs(threads) do
      ok = ok + t:get("ok_count")
      bad = bad + t:get("refused")
      if first == 0 then
         first = t:get("first_refused")
      end
   end
   io.write(string.format("est_skg: ok=%d refused=%d first_refused=%d duration_us=%d " ..
                          "p50_us=%d p99_us=%d max_us=%d connect=%d read=%d write=%d timeout=%d\n",
                          ok, bad, first, summary.duration, latency:percentile(50),
                          latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout))
end
