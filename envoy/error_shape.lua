-- The REST contract's error shape, on responses coming back through Envoy's gRPC-JSON transcoder.
--
-- 1. Services put the HTTP status they mean in the `x-vm-http-status` metadata (Envoy's fixed gRPC->HTTP
--    table has no 409 or 413); apply it to REST responses and never show the header to clients.
-- 2. The transcoder renders a gRPC error as {"code": N, "message": "...", "details": [...]}; the documents
--    promise {"detail": "..."}. The message is already a JSON string literal, so it is copied as is.
-- 3. Document 004's routes answer errors in their own envelope, which the service sends as the status's one
--    detail (visionmesh.envelope.v1.ErrorEnvelope): that object, without its "@type", becomes the body.
local STATUS_HEADER = "x-vm-http-status"
local ENVELOPE_DETAIL = '"details":[{"@type":"type.googleapis.com/visionmesh.envelope.v1.ErrorEnvelope",'

local function string_literal_at(text, quote_index)
  local i = quote_index + 1
  while i <= #text do
    local c = text:sub(i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return text:sub(quote_index, i)
    else
      i = i + 1
    end
  end
  return nil
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  local override = headers:get(STATUS_HEADER)
  if override ~= nil then
    headers:remove(STATUS_HEADER)
    if content_type:find("application/grpc", 1, true) ~= 1 then
      headers:replace(":status", override)
    end
  end
  if content_type:find("application/grpc", 1, true) == 1 then
    return
  end
  -- gRPC plumbing headers mean nothing to REST clients.
  headers:remove("grpc-accept-encoding")
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  local status = tonumber(headers:get(":status") or "200")
  if status < 400 or content_type:find("application/json", 1, true) ~= 1 then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  -- Not a transcoded gRPC error, or already an envelope (its code is negative).
  if text:sub(1, 8) ~= '{"code":' or text:sub(9, 9) == "-" then
    return
  end
  local _, envelope_end = text:find(ENVELOPE_DETAIL, 1, true)
  if envelope_end ~= nil and text:sub(-3) == "}]}" then
    body:setBytes("{" .. text:sub(envelope_end + 1, -3))
    return
  end
  local key = text:find('"message":"', 1, true)
  local literal = key and string_literal_at(text, key + 10) or '""'
  body:setBytes('{"detail":' .. literal .. '}')
end
