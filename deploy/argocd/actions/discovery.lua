-- Actions Argo CD offers on an AgentDynamics (resource.customizations.actions).
-- "refresh" asks the operator for a pass now; it does nothing while spec.suspend is true, so it
-- is shown disabled then.
local actions = {}
actions["refresh"] = {["disabled"] = false}
if obj.spec ~= nil and obj.spec.suspend == true then
  actions["refresh"]["disabled"] = true
end
return actions
