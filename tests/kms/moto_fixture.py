"""Drives a moto server (a real AWS KMS and IAM API on 127.0.0.1) for the CMEK tests.

Usage: python moto_fixture.py ENDPOINT COMMAND [ARGS]; prints one JSON object.

  setup            Starts IAM enforcement's setup on a server started with
                   INITIAL_NO_AUTH_ACTION_COUNT=3: creates the user `admin` (allowed
                   everything) with the first three unauthenticated actions, then, as
                   admin, the user `node` allowed every KMS action. Prints both users'
                   credentials.
  create-key       Creates a symmetric KMS key (as admin when ADMIN_* credentials are in
                   the environment). Prints its ARN.
  deny USER        Deletes USER's KMS policy: KMS then answers it AccessDenied.
  allow USER       Puts USER's KMS policy back.
  disable ARN      DisableKey (moto 5.2.5 records it but still decrypts).
  create-bucket B  Creates the S3 bucket B (the backup store's).
  objects B P [T]  The keys of the objects of bucket B under prefix P, and those whose bytes
                   contain the text T.
"""

import json
import os
import sys

import boto3

REGION = "us-east-1"
KMS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
}
S3_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}
ALL_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def client(endpoint, service, key_id=None, secret=None):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key_id or os.environ.get("ADMIN_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=secret or os.environ.get("ADMIN_SECRET_ACCESS_KEY", "testing"),
    )


def user_with_key(iam, name, policy):
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    iam.put_user_policy(UserName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def main():
    endpoint, command, *args = sys.argv[1:]
    if command == "setup":
        iam = client(endpoint, "iam")
        # The three unauthenticated actions the server allows: CreateUser, CreateAccessKey,
        # PutUserPolicy of the admin.
        admin = user_with_key(iam, "admin", ALL_POLICY)
        iam = client(endpoint, "iam", admin["access_key_id"], admin["secret_access_key"])
        node = user_with_key(iam, "node", KMS_POLICY)
        # S3 in a policy of its own, so that `deny` takes KMS away and leaves the store.
        iam.put_user_policy(UserName="node", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
        print(json.dumps({"admin": admin, "node": node}))
    elif command == "create-key":
        kms = client(endpoint, "kms")
        meta = kms.create_key(Description="conifer test key")["KeyMetadata"]
        print(json.dumps({"arn": meta["Arn"]}))
    elif command == "deny":
        client(endpoint, "iam").delete_user_policy(UserName=args[0], PolicyName="kms")
        print(json.dumps({"denied": args[0]}))
    elif command == "allow":
        client(endpoint, "iam").put_user_policy(
            UserName=args[0], PolicyName="kms", PolicyDocument=json.dumps(KMS_POLICY)
        )
        print(json.dumps({"allowed": args[0]}))
    elif command == "create-bucket":
        client(endpoint, "s3").create_bucket(Bucket=args[0])
        print(json.dumps({"bucket": args[0]}))
    elif command == "objects":
        s3 = client(endpoint, "s3")
        bucket, prefix = args[0], args[1]
        keys, containing = [], []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                keys.append(obj["Key"])
                if len(args) > 2:
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    if args[2].encode() in body:
                        containing.append(obj["Key"])
        print(json.dumps({"keys": keys, "containing": containing}))
    elif command == "disable":
        client(endpoint, "kms").disable_key(KeyId=args[0])
        print(json.dumps({"disabled": args[0]}))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
