-- wrk script for bench_skg: POST /serverkeygen with Basic auth, the same CSR
-- on every request. serverkeygen never replays an earlier answer (each
-- request gets a new key pair), so one CSR is enough.
--
-- wrk ... -s est_skg.lua URL -- CSR_FILE AUTH_FILE KEY_PART
--   CSR_FILE   one line: base64 DER CSR
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

local body, headers, key_part

function setup(thread)
   threads[#threads + 1] = thread
end

local function first_line(path)
   local f = assert(io.open(path, "r"))
   local line = f:read("*l")
   f:close()
   return line
end

function init(args)
   body = first_line(args[1])
   key_part = args[3]
   headers = {
      ["Content-Type"] = "application/pkcs10",
      ["Authorization"] = "Basic " .. first_line(args[2]),
   }
end

function request()
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
