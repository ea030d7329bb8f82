-- wrk script: POST a fixed JSON body, then print one machine-readable summary line.
-- The body and API key come from the environment (BENCH_BODY, BENCH_KEY) so one script
-- serves every case; bench/loadgen.py sets them and parses the line starting {"bench":.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "*/*"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"bench":1,"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end

-- BENCH_ADDRS="host:port,host:port,...": each thread connects to the next address in turn,
-- so one wrk spreads its connections over several routers with no proxy between.
local addrs = os.getenv("BENCH_ADDRS")
if addrs and addrs ~= "" then
   local targets = {}
   for host, port in string.gmatch(addrs, "([^,]+):(%d+)") do
      table.insert(targets, {host, port})
   end
   local turn = 0
   function setup(thread)
      local target = targets[turn % #targets + 1]
      turn = turn + 1
      thread.addr = wrk.lookup(target[1], target[2])[1]
   end
end
