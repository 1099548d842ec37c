// A foreign client of neuralir.v1: loads proto/ with @grpc/proto-loader, sends a Rerank whose
// passages[1].first_stage_score is NaN over @grpc/grpc-js, and prints what it can read of the
// refusal as one JSON line: the status code, the message and the google.rpc.BadRequest field
// violations decoded from the grpc-status-details-bin trailer.
//
// usage: node bad_request.js ADDRESS PROTO_DIR GOOGLE_RPC_INCLUDE_DIR PROTOBUF_INCLUDE_DIR
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [address, protoDir, googleRpcDir, protobufDir] = process.argv.slice(2);
const includeDirs = [protoDir, googleRpcDir, protobufDir];

const definition = protoLoader.loadSync("neuralir/v1/rerank_service.proto", {
  includeDirs,
  keepCase: true,
});
const { RerankService } = grpc.loadPackageDefinition(definition).neuralir.v1;

// google.rpc.Status and BadRequest, from googleapis-common-protos' files.
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => {
  for (const dir of includeDirs) {
    const candidate = path.join(dir, target);
    if (require("fs").existsSync(candidate)) return candidate;
  }
  return target;
};
root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = root.lookupType("google.rpc.Status");
const BadRequest = root.lookupType("google.rpc.BadRequest");

const client = new RerankService(address, grpc.credentials.createInsecure());
const request = {
  query: "library automation",
  passages: [
    { id: "a", text: "a passage about libraries", first_stage_score: 1.5 },
    { id: "b", text: "another passage", first_stage_score: NaN },
  ],
};
const deadline = new Date(Date.now() + 30000);
client.Rerank(request, { deadline }, (error, response) => {
  const out = { code: 0, details: "", violations: [], status_details_bin: false };
  if (error) {
    out.code = error.code;
    out.details = error.details;
    const raw = error.metadata.get("grpc-status-details-bin");
    if (raw.length > 0) {
      out.status_details_bin = true;
      const status = Status.decode(raw[0]);
      for (const detail of status.details) {
        if (detail.type_url === "type.googleapis.com/google.rpc.BadRequest") {
          const bad = BadRequest.decode(detail.value);
          for (const v of bad.field_violations) {
            out.violations.push({ field: v.field, description: v.description });
          }
        }
      }
    }
  } else {
    out.response = response;
  }
  console.log(JSON.stringify(out));
  client.close();
});
