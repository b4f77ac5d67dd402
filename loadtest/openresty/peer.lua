-- make bench's OpenResty peer: GET /v1/keys/{key} answered from Redis with
-- lua-resty-redis (Debian's lua-nginx-redis, `nginx.redis`), the body the API
-- gives for a text value. A baseline, not a product: no limits, no ETag.
--
-- With `cache` on, each worker keeps the bodies it answered in a table, kept
-- exact as the API's value cache is (api/src/cache/tracking.rs): a timer per
-- worker holds one connection with CLIENT TRACKING ON REDIRECT <own id> BCAST,
-- subscribed to __redis__:invalidate, and drops a key when Redis says it
-- changed, everything on a null list (a flush) or when the connection ends.
-- A read that crossed an invalidation is not kept (a generation counter
-- taken before the read), and nothing is served while tracking is down.
local redis = require "nginx.redis"
local cjson = require "cjson.safe"

local M = {}
local conf
local cache, serving, generation = {}, false, 0
local cached, size = 0, 0

local function connect()
    local red = redis:new()
    red:set_timeouts(1000, 1000, 1000)
    local ok, err = red:connect(conf.host, conf.port)
    if not ok then return nil, err end
    -- A connection from the keepalive pool is already authenticated.
    if conf.password ~= "" and red:get_reused_times() == 0 then
        ok, err = red:auth(conf.password)
        if not ok then return nil, err end
    end
    return red
end

local function drop_all()
    generation = generation + 1
    cache, cached = {}, 0
end

local function track(premature)
    if premature then return end
    local red, err = connect()
    if red then
        -- Invalidations come on this connection only; no read is pooled on it.
        red:set_timeouts(1000, 1000, 3600000)
        local id = red:client("id")
        local ok = id and red:client("tracking", "on", "redirect", id, "bcast")
        ok = ok and red:subscribe("__redis__:invalidate")
        if ok then
            drop_all()
            serving = true
            while true do
                local message, rerr = red:read_reply()
                if not message then err = rerr break end
                -- {"message", channel, keys}: keys a list, or null for "everything".
                if message[1] == "message" then
                    local keys = message[3]
                    if type(keys) ~= "table" then
                        drop_all()
                    else
                        generation = generation + 1
                        for _, key in ipairs(keys) do
                            if cache[key] then cache[key], cached = nil, cached - 1 end
                        end
                    end
                end
            end
        end
        red:close()
    end
    serving = false
    drop_all()
    ngx.log(ngx.WARN, "tracking connection ended: ", err or "refused")
    ngx.timer.at(0.1, track)
end

function M.init(settings)
    conf = settings
    size = settings.cache_entries or 0
    if size > 0 and ngx.worker.id() ~= nil then
        ngx.timer.at(0, track)
    end
end

local function body_of(key, value)
    return '{"key":' .. cjson.encode(key) .. ',"value":' .. cjson.encode(value) .. '}'
end

function M.get()
    local key = ngx.unescape_uri(string.sub(ngx.var.uri, 10))
    if serving then
        local body = cache[key]
        if body then
            ngx.header["Content-Type"] = "application/json"
            return ngx.print(body)
        end
    end
    local seen = generation
    local red, err = connect()
    if not red then
        ngx.log(ngx.ERR, "redis: ", err)
        return ngx.exit(503)
    end
    local value
    value, err = red:get(key)
    if not value then
        red:close()
        ngx.log(ngx.ERR, "redis: ", err)
        return ngx.exit(503)
    end
    -- As lua-resty-redis advises: back into the worker's pool, not closed.
    red:set_keepalive(conf.idle_ms, conf.pool)
    if value == ngx.null then return ngx.exit(404) end
    local body = body_of(key, value)
    if serving and seen == generation and cached < size then
        cache[key], cached = body, cached + 1
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(body)
end

return M
