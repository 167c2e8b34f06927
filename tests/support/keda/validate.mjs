// Validate KEDA objects against KEDA's CRD schemas (@kubernetes-models/keda).
// Reads a JSON array of objects on stdin; prints one JSON line per object:
// {"kind", "name", "error"} with error null when the object is valid.
import * as v1alpha1 from "@kubernetes-models/keda/keda.sh/v1alpha1";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const objects = JSON.parse(Buffer.concat(chunks).toString("utf8"));
let failed = 0;
for (const object of objects) {
  const name = object?.metadata?.name ?? "";
  const Model = object.apiVersion === "keda.sh/v1alpha1" ? v1alpha1[object.kind] : undefined;
  let error = null;
  if (Model === undefined) {
    error = `no KEDA model for ${object.apiVersion} ${object.kind}`;
  } else {
    try {
      new Model(object).validate();
    } catch (exc) {
      error = String(exc?.message ?? exc);
    }
  }
  if (error !== null) failed += 1;
  console.log(JSON.stringify({ kind: object.kind, name, error }));
}
process.exit(failed ? 1 : 0);
