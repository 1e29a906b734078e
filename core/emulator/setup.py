"""Readies a freshly started moto server for the tests: waits until it answers, makes its
Lambda run without Docker (a synchronous invoke echoes its payload), and creates the role the
tests that create functions use. Prints that role's ARN.

Usage: setup.py URL   (the emulator's address, e.g. http://127.0.0.1:5000)
Used by scripts/with-emulator.sh and by lambda_stream::testing when it starts an emulator.
"""
import json
import sys
import time
import urllib.request

url = sys.argv[1]
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("the emulator at %s did not answer" % url)

urllib.request.urlopen(urllib.request.Request(
    url + "/moto-api/config", method="POST", headers={"Content-Type": "application/json"},
    data=json.dumps({"lambda": {"use_docker": False}}).encode()))

import boto3  # noqa: E402  (moto brings it)

iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"Service": "lambda.amazonaws.com"}}]}
role = iam.create_role(RoleName="lambda-stream-test", AssumeRolePolicyDocument=json.dumps(trust))
print(role["Role"]["Arn"])
