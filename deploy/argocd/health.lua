-- Argo CD health check for dynamics.bithuman.ai/AgentDynamics (resource.customizations.health).
-- Argo CD runs it with gopher-lua (Lua 5.1) and, for checks from argocd-cm, only the base, table
-- and package libraries (os.time and os.date through require("os") only): no string or math
-- functions here, only comparisons and "..".
--
--   Suspended    spec.suspend is true (the operator reads and changes nothing)
--   Progressing  status not written yet, or written for an older generation; Reconciling=True
--                (generating, waiting for a generation slot, retrying); anything not yet Ready
--   Degraded     Stalled=True (needs a fix: the spec, a Secret, credits); message says what
--   Healthy      Ready=True for the current generation (observedGeneration == metadata.generation)
--
-- Only the conditions' status decides, never their reason: a reason the operator adds later maps
-- by its condition (Stalled=True Degraded, Reconciling=True Progressing) with no change here.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = ""
  if c.reason ~= nil and c.reason ~= "" then
    text = c.reason
  end
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  if text == "" then
    text = tostring(c.type) .. " is " .. tostring(c.status)
  end
  return text
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the operator reads and changes nothing"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the object"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status is for generation " .. status.observedGeneration .. ")"
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  if ready.observedGeneration == nil or generation == nil or ready.observedGeneration == generation then
    hs.status = "Healthy"
    hs.message = ready.message or "Ready"
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report Ready for generation " .. generation ..
    " (Ready is for generation " .. ready.observedGeneration .. ")"
  return hs
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if status.remoteStatus ~= nil and status.remoteStatus ~= "ready" then
  hs.status = "Progressing"
  hs.message = "The bitHuman API reports " .. status.remoteStatus
  return hs
end

hs.status = "Progressing"
if ready ~= nil and describe(ready) ~= "" then
  hs.message = "Not ready: " .. describe(ready)
else
  hs.message = "Waiting for the operator to report Ready"
end
return hs
