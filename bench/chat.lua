-- wrk script: POST a chat completion, cycling through the Authorization keys in a file (one per line), and
-- print one JSON line of results in done(). Arguments after `--`: <path> <keys file> <body file> [close]
-- ("close": every request asks for `Connection: close`, so each one opens a new connection).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests_list = {}
local index = 0

local function read_all(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

function init(args)
  local path = args[1] or "/v1/chat/completions"
  local body = read_all(args[3])
  for key in io.lines(args[2]) do
    if key ~= "" then
      local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
      if args[4] == "close" then headers["Connection"] = "close" end
      table.insert(requests_list, wrk.format("POST", path, headers, body))
    end
  end
  -- Threads start at different keys so requests spread over every team.
  index = (tid or 0) * 7919 % #requests_list
end

function request()
  index = index + 1
  if index > #requests_list then index = 1 end
  return requests_list[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
