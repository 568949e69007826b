#!/bin/sh
# Run once by compose's minio-init job, with MinIO's root credentials: makes the buckets and the app's own
# user. The app signs in as MINIO_APP_USER, whose policy (minio-app-policy.json beside this file) reaches the
# objects of its two buckets and nothing else; the root credentials stay with MinIO and this job.
set -eu

: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
: "${MINIO_APP_USER:?set MINIO_APP_USER}" "${MINIO_APP_PASSWORD:?set MINIO_APP_PASSWORD}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"
POLICY_FILE="${MINIO_APP_POLICY_FILE:-$(dirname "$0")/minio-app-policy.json}"
POLICY=deepscreen-app

if [ "$MINIO_APP_USER" = "$MINIO_ROOT_USER" ]; then
  echo "minio-init: MINIO_APP_USER must differ from MINIO_ROOT_USER (the app gets a least-privilege user)" >&2
  exit 2
fi

mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
for bucket in deepscreen uploads; do
  mc mb --ignore-existing "local/$bucket"
done
mc admin policy create local "$POLICY" "$POLICY_FILE"
mc admin user add local "$MINIO_APP_USER" "$MINIO_APP_PASSWORD"
# attach answers an error when the policy is already attached (a second `compose up`): that is success
if ! mc admin policy attach local "$POLICY" --user "$MINIO_APP_USER"; then
  mc admin user info local "$MINIO_APP_USER" | grep -q "$POLICY"
fi
echo "minio-init: buckets deepscreen, uploads; user $MINIO_APP_USER with policy $POLICY"
