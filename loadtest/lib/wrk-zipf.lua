-- wrk script: GET /v1/keys/key:N with N drawn from a Zipf distribution over
-- ZIPF_KEYS keys (exponent ZIPF_S, default 1), the hottest being key:0; the
-- report is wrk-json.lua's (its path in WRK_JSON).
dofile(os.getenv("WRK_JSON"))

local cdf = {}
local n = tonumber(os.getenv("ZIPF_KEYS"))
local s = tonumber(os.getenv("ZIPF_S") or "1")

init = function()
   local total = 0
   for i = 1, n do
      total = total + 1 / i ^ s
      cdf[i] = total
   end
   for i = 1, n do
      cdf[i] = cdf[i] / total
   end
   math.randomseed(42)
end

request = function()
   local u, lo, hi = math.random(), 1, n
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return wrk.format(nil, "/v1/keys/key:" .. (lo - 1))
end
