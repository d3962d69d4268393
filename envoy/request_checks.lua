-- Request checks for REST calls, before the gRPC-JSON transcoder sees them.
--
-- The transcoder drops unknown JSON fields, answers type errors in protobuf's words and hands invalid UTF-8 to
-- the services. This filter resolves each REST request to its route (as the transcoder does: literal segments
-- before wildcards) and refuses, with a sentence a client can act on:
--   * a path or query value that is not valid UTF-8, or not of its field's type;
--   * a JSON body that is not strict JSON, not UTF-8, or that names a field the request does not have, gives a
--     value of the wrong type or range, or leaves out a field marked (google.api.field_behavior) = REQUIRED.
-- It answers 404 (no route) or 405 (another method) itself too. It tags every REST request with the error
-- shape of its document (x-vm-error-shape), which Envoy's local-reply mappers turn into the body; missing
-- required fields are tagged x-vm-error-code 807 (document 004's "invalid parameter"), other refusals 806.
--
-- The routes and message shapes come from the descriptor set: gateway/request_schema.py renders them as JSON
-- into SCHEMA_JSON, which the gateway prepends to this file.

local SHAPE_HEADER = "x-vm-error-shape"
local CODE_HEADER = "x-vm-error-code"
local INVALID_PARAMETER = "807"
local MAX_DEPTH = 64

-- JSON values: strings, numbers and booleans are Lua values; null, objects and arrays are tagged tables.
local NULL = setmetatable({}, { __name = "null" })
local OBJECT = { __name = "object" }
local ARRAY = { __name = "array" }

local Refusal = {} -- the metatable of errors raised to refuse a request

local function refuse(message, code)
  error(setmetatable({ message = message, code = code }, Refusal), 0)
end

-- UTF-8 --------------------------------------------------------------------------------------------------

-- The length of the well-formed UTF-8 sequence starting at byte i (non-ASCII lead byte), or nil.
local function utf8_sequence(text, i)
  local c = text:byte(i)
  local length, low, high = nil, 0x80, 0xBF
  if c >= 0xC2 and c <= 0xDF then
    length = 2
  elseif c >= 0xE0 and c <= 0xEF then
    length = 3
    if c == 0xE0 then low = 0xA0 elseif c == 0xED then high = 0x9F end -- overlong; surrogates
  elseif c >= 0xF0 and c <= 0xF4 then
    length = 4
    if c == 0xF0 then low = 0x90 elseif c == 0xF4 then high = 0x8F end -- overlong; beyond U+10FFFF
  else
    return nil
  end
  local second = text:byte(i + 1)
  if second == nil or second < low or second > high then
    return nil
  end
  for k = 2, length - 1 do
    local next_byte = text:byte(i + k)
    if next_byte == nil or next_byte < 0x80 or next_byte > 0xBF then
      return nil
    end
  end
  return length
end

local function valid_utf8(text)
  local i = 1
  while true do
    i = text:find("[\128-\255]", i)
    if i == nil then
      return true
    end
    local length = utf8_sequence(text, i)
    if length == nil then
      return false
    end
    i = i + length
  end
end

local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  elseif code < 0x10000 then
    return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  return string.char(
    0xF0 + math.floor(code / 0x40000),
    0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40,
    0x80 + code % 0x40
  )
end

-- JSON (RFC 8259, strictly) --------------------------------------------------------------------------------

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

-- The number a text holds if it is exactly a JSON number, else nil.
local function json_number(text)
  local sign, int, frac, exp = text:match("^(%-?)(%d+)(%.?%d*)([eE]?[-+]?%d*)$")
  if int == nil or (#int > 1 and int:sub(1, 1) == "0") or frac == "." then
    return nil
  end
  if exp ~= "" and not exp:match("^[eE][-+]?%d+$") then
    return nil
  end
  return tonumber(sign .. int .. frac .. exp)
end

local function decode_json(text)
  local pos = 1

  local function fail(what)
    refuse("The request body is not valid JSON: " .. what .. " at character " .. pos)
  end

  local function skip_space()
    pos = text:find("[^ \t\r\n]", pos) or (#text + 1)
  end

  local value

  local function string_value()
    local parts = {}
    pos = pos + 1
    while true do
      local stop = text:find('[%z\1-\31"\\\128-\255]', pos)
      if stop == nil then
        pos = #text + 1
        fail("a string is not closed")
      end
      if stop > pos then
        parts[#parts + 1] = text:sub(pos, stop - 1)
      end
      pos = stop
      local c = text:byte(stop)
      if c == 34 then -- "
        pos = stop + 1
        return table.concat(parts)
      elseif c == 92 then -- \
        local escape = text:sub(stop + 1, stop + 1)
        if escape == "u" then
          local code = tonumber(text:match("^%x%x%x%x", stop + 2) or "", 16)
          if code == nil then
            fail("a \\u escape needs four hex digits")
          end
          pos = stop + 6
          if code >= 0xD800 and code <= 0xDBFF then
            local low = tonumber(text:match("^\\u(%x%x%x%x)", pos) or "", 16)
            if low == nil or low < 0xDC00 or low > 0xDFFF then
              fail("a \\u escape is half of a surrogate pair")
            end
            code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
            pos = pos + 6
          elseif code >= 0xDC00 and code <= 0xDFFF then
            fail("a \\u escape is half of a surrogate pair")
          end
          parts[#parts + 1] = utf8_char(code)
        elseif ESCAPES[escape] then
          parts[#parts + 1] = ESCAPES[escape]
          pos = stop + 2
        else
          fail("a string has an unknown escape")
        end
      elseif c < 32 then
        fail("a string holds a control character (escape it)")
      else
        local length = utf8_sequence(text, stop)
        if length == nil then
          refuse("The request body is not valid UTF-8 (byte " .. stop .. ")")
        end
        parts[#parts + 1] = text:sub(stop, stop + length - 1)
        pos = stop + length
      end
    end
  end

  local function container(depth, closing, element)
    if depth > MAX_DEPTH then
      fail("values nest deeper than " .. MAX_DEPTH .. " levels")
    end
    pos = pos + 1
    skip_space()
    if text:sub(pos, pos) == closing then
      pos = pos + 1
      return
    end
    while true do
      element()
      skip_space()
      local c = text:sub(pos, pos)
      if c == closing then
        pos = pos + 1
        return
      elseif c ~= "," then
        fail(c == "" and "the body ends too early" or "expected ',' or '" .. closing .. "'")
      end
      pos = pos + 1
      skip_space()
    end
  end

  value = function(depth)
    skip_space()
    local c = text:sub(pos, pos)
    if c == "{" then
      local object = setmetatable({ keys = {}, values = {} }, OBJECT)
      container(depth + 1, "}", function()
        if text:sub(pos, pos) ~= '"' then
          fail("expected a quoted field name")
        end
        local key = string_value()
        skip_space()
        if text:sub(pos, pos) ~= ":" then
          fail("expected ':' after a field name")
        end
        pos = pos + 1
        if object.values[key] ~= nil then
          refuse('The field "' .. key .. '" appears twice in the request body')
        end
        object.keys[#object.keys + 1] = key
        object.values[key] = value(depth + 1)
      end)
      return object
    elseif c == "[" then
      local array = setmetatable({}, ARRAY)
      container(depth + 1, "]", function()
        array[#array + 1] = value(depth + 1)
      end)
      return array
    elseif c == '"' then
      return string_value()
    elseif text:sub(pos, pos + 3) == "true" then
      pos = pos + 4
      return true
    elseif text:sub(pos, pos + 4) == "false" then
      pos = pos + 5
      return false
    elseif text:sub(pos, pos + 3) == "null" then
      pos = pos + 4
      return NULL
    elseif c == "" then
      fail("the body ends too early")
    end
    local raw = text:match("^-?[%d.eE+-]+", pos)
    local number = raw and json_number(raw)
    if number == nil then
      fail("unexpected text")
    end
    pos = pos + #raw
    return number
  end

  skip_space()
  if pos > #text then
    return nil -- an empty body: no fields
  end
  local decoded = value(0)
  skip_space()
  if pos <= #text then
    fail("unexpected text after the JSON value")
  end
  return decoded
end

-- The schema ---------------------------------------------------------------------------------------------

local function parse_schema(text)
  local ok, decoded = pcall(decode_json, text)
  assert(ok, "the rendered request schema is not valid JSON")
  -- JSON containers -> plain Lua tables
  local function plain(v)
    local meta = getmetatable(v)
    if meta == OBJECT then
      local out = {}
      for _, key in ipairs(v.keys) do
        out[key] = plain(v.values[key])
      end
      return out
    elseif meta == ARRAY then
      local out = {}
      for i, item in ipairs(v) do
        out[i] = plain(item)
      end
      return out
    elseif v == NULL then
      return nil
    end
    return v
  end
  return plain(decoded)
end

local SCHEMA = parse_schema(SCHEMA_JSON)
local MESSAGES = SCHEMA.messages
for _, message in pairs(MESSAGES) do
  message.by_key = {}
  local names = {}
  for _, field in ipairs(message.fields) do
    message.by_key[field.name] = field
    message.by_key[field.json] = field
    names[#names + 1] = field.name
  end
  message.names = table.concat(names, ", ")
end

-- Checking values against fields ---------------------------------------------------------------------------

-- {lowest, highest, as the message says it}
local INTEGER_RANGES = {
  int32 = { -2147483648, 2147483647, "from -2147483648 to 2147483647" },
  uint32 = { 0, 4294967295, "from 0 to 4294967295" },
  int64 = { -9223372036854775808, 9223372036854775807, "from -9223372036854775808 to 9223372036854775807" },
  uint64 = { 0, 18446744073709551615, "from 0 to 18446744073709551615" },
}
local FLOAT_MAX = 3.4028234663852886e38
local SPECIAL_FLOATS = { NaN = true, Infinity = true, ["-Infinity"] = true }

local function shorten(text)
  if #text <= 60 then
    return text
  end
  local cut = 57
  while cut > 1 and text:byte(cut + 1) and text:byte(cut + 1) >= 0x80 and text:byte(cut + 1) < 0xC0 do
    cut = cut - 1 -- never cut inside a UTF-8 sequence
  end
  return text:sub(1, cut) .. "..."
end

local function describe(v)
  local meta = getmetatable(v)
  if v == NULL then
    return "null"
  elseif meta == OBJECT then
    return "an object"
  elseif meta == ARRAY then
    return "a list"
  elseif type(v) == "string" then
    return '"' .. (shorten(v):gsub('[%c"\\]', "?")) .. '"'
  elseif type(v) == "number" then
    return string.format("%.17g", v)
  end
  return tostring(v)
end

local function article(kind)
  return ({
    string = "a string",
    bytes = "base64 text",
    bool = "true or false",
    double = "a number",
    float = "a number",
    struct = "an object",
    list = "a list",
  })[kind] or "a whole number"
end

-- A scalar value (from JSON, or the text of a path or query parameter when `from_text`): nil if it fits the
-- kind, else what is wrong.
local function scalar_problem(kind, v, from_text)
  if kind == "string" then
    return type(v) ~= "string" and "must be a string" or nil
  elseif kind == "bytes" then
    return (type(v) ~= "string" or not v:match("^[%w+/_-]*=?=?$")) and "must be base64 text" or nil
  elseif kind == "bool" then
    if from_text then
      return (v ~= "true" and v ~= "false") and "must be true or false" or nil
    end
    return type(v) ~= "boolean" and "must be true or false" or nil
  end
  local number = v
  if type(v) == "string" then
    if (kind == "double" or kind == "float") and SPECIAL_FLOATS[v] then
      return nil
    end
    number = json_number(v)
  end
  if number == math.huge or number == -math.huge then
    return "is out of range" -- a numeric literal too large for a double ("Infinity" is the way to say it)
  end
  local range = INTEGER_RANGES[kind]
  if range ~= nil then
    if type(number) ~= "number" or number % 1 ~= 0 then
      return "must be a whole number"
    end
    if number < range[1] or number > range[2] then
      return "must be a whole number " .. range[3]
    end
    return nil
  end
  if type(number) ~= "number" then
    return "must be a number"
  end
  if kind == "float" and math.abs(number) > FLOAT_MAX then
    return "is too large for a 32-bit float"
  end
  return nil
end

local check_message

local function check_single(field, v, where, depth)
  local kind = field.kind
  if kind == "message" then
    return check_message(field.type, v, where, depth)
  elseif kind == "value" or kind == "httpbody" then
    return
  elseif kind == "struct" then
    if getmetatable(v) ~= OBJECT then
      refuse(where .. " must be an object, got " .. describe(v))
    end
    return
  elseif kind == "list" then
    if getmetatable(v) ~= ARRAY then
      refuse(where .. " must be a list, got " .. describe(v))
    end
    return
  elseif kind == "enum" then
    local names = SCHEMA.enums[field.type]
    for _, name in ipairs(names) do
      if v == name then
        return
      end
    end
    if type(v) == "number" and scalar_problem("int32", v) == nil then
      return
    end
    refuse(where .. " must be one of " .. table.concat(names, ", ") .. ", got " .. describe(v))
  end
  local problem = scalar_problem(kind, v, false)
  if problem ~= nil then
    refuse(where .. " " .. problem .. ", got " .. describe(v))
  end
end

local function check_field(field, v, where, depth)
  if v == NULL then
    return -- null means "not set" in proto3 JSON; required fields are checked by their message
  end
  if field.repeated then
    if getmetatable(v) ~= ARRAY then
      refuse(where .. " must be a list, got " .. describe(v))
    end
    for i, item in ipairs(v) do
      local item_where = where .. "[" .. (i - 1) .. "]"
      if item == NULL and field.kind ~= "value" then
        refuse(item_where .. " must not be null")
      end
      check_single(field, item, item_where, depth + 1)
    end
  elseif field.kind == "map" then
    if getmetatable(v) ~= OBJECT then
      refuse(where .. " must be an object, got " .. describe(v))
    end
    for _, key in ipairs(v.keys) do
      local entry_where = where .. '["' .. shorten(key) .. '"]'
      if field.key ~= "string" and scalar_problem(field.key, key, true) ~= nil then
        refuse("The keys of " .. where .. " must be " .. article(field.key) .. ", got " .. describe(key))
      end
      local item = v.values[key]
      if item == NULL and field.value.kind ~= "value" then
        refuse(entry_where .. " must not be null")
      end
      check_single(field.value, item, entry_where, depth + 1)
    end
  else
    check_single(field, v, where, depth)
  end
end

local function join(where, name)
  return where == "" and name or where .. "." .. name
end

-- `bound`: fields the path sets, which the body may not set too (top level only).
check_message = function(type_name, v, where, depth, bound)
  local message = MESSAGES[type_name]
  if getmetatable(v) ~= OBJECT then
    refuse((where == "" and "The request body" or where) .. " must be a JSON object, got " .. describe(v))
  end
  local seen = {}
  for _, key in ipairs(v.keys) do
    local field = message.by_key[key]
    if field == nil then
      local listing = where == "" and "the request's fields are" or "the fields of " .. message.label .. " are"
      refuse('Unknown field "' .. shorten(join(where, key)) .. '"; ' .. listing .. ": " .. message.names)
    end
    if bound ~= nil and bound[field.name] then
      refuse(field.name .. " is given by the path; leave it out of the body")
    end
    if seen[field.name] then
      refuse(join(where, field.name) .. " is given twice (as " .. seen[field.name] .. " and " .. key .. ")")
    end
    seen[field.name] = key
    check_field(field, v.values[key], join(where, field.name), depth)
  end
  for _, field in ipairs(message.fields) do
    if field.required and not (bound and bound[field.name]) then
      local given = v.values[field.name]
      if given == nil then
        given = v.values[field.json]
      end
      if given == nil or given == NULL then
        refuse(join(where, field.name) .. " is required", INVALID_PARAMETER)
      end
    end
  end
end

-- Paths and queries ---------------------------------------------------------------------------------------

local function percent_decode(text, plus_is_space)
  if plus_is_space then
    text = text:gsub("%+", " ")
  end
  return (text:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- The field a dotted path (as in a query parameter or a path variable) names, from the request message.
local function field_at(type_name, dotted)
  local message, field = MESSAGES[type_name], nil
  for part in dotted:gmatch("[^.]+") do
    if message == nil then
      return nil
    end
    field = message.by_key[part]
    if field == nil then
      return nil
    end
    message = field.kind == "message" and MESSAGES[field.type] or nil
  end
  return field
end

local function check_parameter(field, value, label)
  if not valid_utf8(value) then
    refuse("The " .. label .. " is not valid UTF-8")
  end
  local kind = field.kind
  if kind == "enum" then
    return
  end
  local problem = (kind == "message" or kind == "struct" or kind == "list" or kind == "value") and "cannot be set here"
    or scalar_problem(kind, value, true)
  if problem ~= nil then
    refuse("The " .. label .. " " .. problem .. ", got " .. describe(value))
  end
end

-- Routes Envoy answers itself (the API reference: SCHEMA.pass_through, path -> methods): let through unchecked.
local PASS_THROUGH = {}

-- The route of a request, and the values its path variables captured; or nil and the methods the path takes.
local function resolve(method, path)
  local passing = SCHEMA.pass_through[path]
  if passing ~= nil then
    for _, allowed in ipairs(passing) do
      if allowed == method then
        return PASS_THROUGH, {}
      end
    end
    return nil, passing
  end
  local other_methods = {}
  for _, route in ipairs(SCHEMA.routes) do
    local captures = { path:match(route.pattern) } -- the whole match when the pattern captures nothing
    if #captures > 0 then
      if route.method == method then
        return route, captures
      end
      other_methods[#other_methods + 1] = route.method
    end
  end
  return nil, other_methods
end

local function check_request(handle, route, captures, query)
  local bound = {}
  for i, variable in ipairs(route.variables) do
    local field = field_at(route.message, variable)
    bound[variable] = true
    if field ~= nil then
      check_parameter(field, percent_decode(captures[i], false), "path parameter " .. variable)
    end
  end
  local given = {}
  if route.body ~= "*" then
    for pair in query:gmatch("[^&]+") do
      local raw_name, raw_value = pair:match("^([^=]*)=?(.*)$")
      local name = percent_decode(raw_name, true)
      local field = valid_utf8(name) and not bound[name] and name ~= route.body and field_at(route.message, name)
      if field then -- unknown query parameters are ignored, as by the transcoder
        check_parameter(field, percent_decode(raw_value, true), "query parameter " .. name)
        given[field.name] = true
      end
    end
    for _, field in ipairs(MESSAGES[route.message].fields) do
      if field.required and not bound[field.name] and field.name ~= route.body and not given[field.name] then
        refuse("The query parameter " .. field.name .. " is required", INVALID_PARAMETER)
      end
    end
  end
  if route.body == "" or route.streamed_body then
    return
  end
  local body = handle:body()
  local text = body and body:getBytes(0, body:length()) or ""
  local decoded = decode_json(text)
  if route.body == "*" then
    check_message(route.message, decoded or setmetatable({ keys = {}, values = {} }, OBJECT), "", 0, bound)
  elseif decoded ~= nil then
    local field = MESSAGES[route.message].by_key[route.body]
    check_field(field, decoded, route.body, 0)
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(SHAPE_HEADER)
  headers:remove(CODE_HEADER)
  if (headers:get("content-type") or ""):find("application/grpc", 1, true) == 1 then
    return -- native gRPC: the services check their own messages
  end
  local path, query = (headers:get(":path") or ""):match("^([^?]*)%??(.*)$")
  local method = headers:get(":method")
  local route, captures = resolve(method, path)
  if route == nil then
    local other_methods = captures
    headers:add(SHAPE_HEADER, SCHEMA.prefix_shapes[path:match("^/([^/]+)") or ""] or "detail")
    if #other_methods > 0 then
      local allowed = table.concat(other_methods, ", ")
      handle:respond(
        { [":status"] = "405", allow = allowed },
        "This path does not take " .. method .. "; it takes " .. allowed
      )
    else
      handle:respond({ [":status"] = "404" }, "No route matches " .. method .. " on this path")
    end
    return
  end
  if route == PASS_THROUGH then
    return
  end
  headers:add(SHAPE_HEADER, route.shape)
  local ok, problem = pcall(check_request, handle, route, captures, query)
  if not ok then
    if getmetatable(problem) ~= Refusal then
      -- A fault of this filter must not block the API: the transcoder and the services still check the request.
      handle:logErr("request check failed: " .. tostring(problem))
      return
    end
    if problem.code ~= nil then
      -- Reading the body yields: header handles taken before it are no longer valid.
      handle:headers():add(CODE_HEADER, problem.code)
    end
    handle:respond({ [":status"] = "400" }, problem.message)
  end
end
