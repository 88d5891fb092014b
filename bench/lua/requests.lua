-- Rotates over the requests in a file, one per line: METHOD<TAB>PATH[<TAB>BODY].
-- Usage: wrk ... -s requests.lua URL -- FILE
-- done() prints one JSON line (prefixed "BENCH ") that bench/run.py parses.

local counter = 1
local threads = {}

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  reqs = {}
  for line in io.lines(args[1]) do
    local method, path, body = line:match("^(%u+)\t([^\t]+)\t?(.*)$")
    local headers = {}
    if body == "" then
      body = nil
    else
      headers["Content-Type"] = "application/json"
    end
    table.insert(reqs, wrk.format(method, path, headers, body))
  end
  -- Threads start at different places, so they do not ask in lock-step.
  n = #reqs
  i = (id or 1) * 7919 % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
