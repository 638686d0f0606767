-- wrk script for bench_est: POST /simpleenroll with Basic auth, a different
-- CSR on every request. A repeated principal + CSR is idempotent in the
-- ledger (the stored certificate comes back without a signature), so reusing
-- a CSR would measure nothing.
--
-- wrk ... -s est_enroll.lua URL -- CSR_FILE NTHREADS AUTH_FILE
--   CSR_FILE   one base64 DER CSR per line
--   NTHREADS   wrk's -t: thread i takes lines i, i+N, i+2N, ... so no two
--              threads ever send the same CSR
--   AUTH_FILE  one line: base64 of user:password
--
-- done() prints "est_enroll: ok=N refused=N wrapped=N first_refused=S";
-- wrapped counts how often a thread ran out of CSRs and started over (the
-- repeats are then idempotent answers, so bench_est fails such a run).

local threads = {}

-- Per thread state, read by done() through thread:get, so globals.
ok_count = 0
refused = 0
wrapped = 0
first_refused = 0

local csrs = {}
local next_csr = 1
local headers

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
   local nthreads = tonumber(args[2])
   local i = 0

   for line in io.lines(args[1]) do
      if i % nthreads == id then
         csrs[#csrs + 1] = line
      end
      i = i + 1
   end
   headers = {
      ["Content-Type"] = "application/pkcs10",
      ["Authorization"] = "Basic " .. first_line(args[3]),
   }
end

function request()
   if next_csr > #csrs then
      next_csr = 1
      wrapped = wrapped + 1
   end
   local body = csrs[next_csr]
   next_csr = next_csr + 1
   return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
   if status == 200 then
      ok_count = ok_count + 1
   else
      refused = refused + 1
      if first_refused == 0 then
         first_refused = status
      end
   end
end

function done(summary, latency, requests)
   local ok, bad, wraps, first = 0, 0, 0, 0

   for _, t in ipairs(threads) do
      ok = ok + t:get("ok_count")
      bad = bad + t:get("refused")
      wraps = wraps + t:get("wrapped")
      if first == 0 then
         first = t:get("first_refused")
      end
   end
   io.write(string.format("est_enroll: ok=%d refused=%d wrapped=%d first_refused=%d\n",
                          ok, bad, wraps, first))
end
