-- Ask the operator for a reconcile pass now: set the annotation
-- dynamics.bithuman.ai/reconcile-requested-at to the current time (UTC, RFC 3339). The operator
-- runs a pass for every new value and echoes it in status.lastHandledReconcileAt. Nothing in
-- spec changes, so a pass generates (and spends credits) only if the object needed it anyway.
-- The annotation is not in Git, so the application stays Synced.
--
-- Argo CD has no global `os` in actions or health checks (its restricted os functions land in the
-- `table` library); `require("os")` is the way to them, as in Argo CD's own actions.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["dynamics.bithuman.ai/reconcile-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
