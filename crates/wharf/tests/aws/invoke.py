"""Calls Wharf's Lambda Invoke API through botocore, AWS's own SDK core, as a user would.

    invoke.py ENDPOINT ACCESS_KEY SECRET_KEY < calls.json

calls.json is a JSON list of Invoke parameters (FunctionName, Payload as a JSON value,
InvocationType, LogType, Qualifier). Prints a JSON list with, per call, either the response
({StatusCode, FunctionError, LogResult decoded, ExecutedVersion, Payload as text, RequestId}) or
the error botocore raised ({error: {exception, code, message, status}}).
"""

import base64
import json
import sys

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError


def main():
    endpoint, access_key, secret_key = sys.argv[1:4]
    client = botocore.session.get_session().create_client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )
    results = []
    for call in json.load(sys.stdin):
        params = dict(call)
        if "Payload" in params:
            params["Payload"] = json.dumps(params["Payload"]).encode()
        try:
            r = client.invoke(**params)
        except ClientError as e:
            results.append(
                {
                    "error": {
                        "exception": type(e).__name__,
                        "code": e.response["Error"]["Code"],
                        "message": e.response["Error"]["Message"],
                        "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
                    }
                }
            )
            continue
        log = r.get("LogResult")
        results.append(
            {
                "StatusCode": r["StatusCode"],
                "FunctionError": r.get("FunctionError"),
                "LogResult": base64.b64decode(log).decode() if log else None,
                "ExecutedVersion": r.get("ExecutedVersion"),
                "Payload": r["Payload"].read().decode(),
                "RequestId": r["ResponseMetadata"]["RequestId"],
            }
        )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
