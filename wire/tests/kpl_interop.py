"""Bridge between the Rust interoperability test and AWS's aws-kinesis-agg library.

Reads a JSON document on stdin and writes one on stdout; bytes travel as hex.

  deaggregate: [{"pk": str, "data": hex}, ...] Kinesis records
               -> [{"pk": str, "data": hex}, ...] user records
  aggregate:   [{"pk": str, "data": hex}, ...] user records
               -> [{"pk": str, "ehk": str, "data": hex}, ...] aggregated records
"""

import base64
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records


def deaggregate(records):
    events = [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "approximateArrivalTimestamp": 1700000000.0,
                "partitionKey": r["pk"],
                "sequenceNumber": str(49590338271490256608559692538361571095921575989136588898 + i),
                "data": base64.b64encode(bytes.fromhex(r["data"])).decode(),
            }
        }
        for i, r in enumerate(records)
    ]
    out = []
    for user in deaggregate_records(events):
        k = user["kinesis"]
        out.append({"pk": k["partitionKey"], "data": base64.b64decode(k["data"]).hex()})
    return out


def aggregate(records, max_size):
    agg = RecordAggregator(max_size=max_size)
    out = []

    def emit(rec):
        pk, ehk, data = rec.get_contents()
        out.append({"pk": pk, "ehk": ehk, "data": data.hex()})

    for r in records:
        done = agg.add_user_record(r["pk"], bytes.fromhex(r["data"]))
        if done:
            emit(done)
    last = agg.clear_and_get()
    if last:
        emit(last)
    return out


def main():
    mode = sys.argv[1]
    records = json.load(sys.stdin)
    if mode == "deaggregate":
        result = deaggregate(records)
    elif mode == "aggregate":
        result = aggregate(records, int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
