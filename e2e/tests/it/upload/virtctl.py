"""A stand-in for `virtctl image-upload`, written from its documented protocol.

usage: virtctl.py dv|pvc NAME IMAGE_PATH SIZE VOLUME_MODE CONTENT_TYPE [--no-wait]

Creates a DataVolume with `source.upload` (or a PVC annotated
cdi.kubevirt.io/storage.upload.target), waits until it is ready for an upload, asks the
upload.cdi.kubevirt.io API for a token, probes the proxy's async endpoint with HEAD, POSTs
the file, and waits for the claim's cdi.kubevirt.io/storage.pod.phase to be Succeeded, as
virtctl does. Prints "uploaded <async|sync> <status>".
"""
import os
import ssl
import sys
import time
import http.client
import urllib.parse

from kubernetes import client, config

kind, name, path, size, mode, content = sys.argv[1:7]
ns = "default"
config.load_kube_config()
core = client.CoreV1Api()
custom = client.CustomObjectsApi()
storage_class = os.environ.get("STORAGE_CLASS", "local-immediate")


def poll(what, check, timeout=300, every=0.5):
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise SystemExit("timed out waiting for " + what)


def annotations(pvc_name):
    try:
        pvc = core.read_namespaced_persistent_volume_claim(pvc_name, ns)
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return {}
        raise
    return pvc.metadata.annotations or {}


if kind == "dv":
    custom.create_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", ns, "datavolumes", {
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"contentType": content, "source": {"upload": {}},
                 "storage": {"storageClassName": storage_class, "volumeMode": mode,
                             "resources": {"requests": {"storage": size}}}}})

    def ready():
        dv = custom.get_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", ns, "datavolumes", name)
        phase = (dv.get("status") or {}).get("phase")
        if phase in ("WaitForFirstConsumer", "PendingPopulation"):
            raise SystemExit("cannot upload to a DataVolume in phase %s without --force-bind" % phase)
        return phase == "UploadReady"
    poll("the DataVolume to be UploadReady", ready)
else:
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": name, "annotations": {
            "cdi.kubevirt.io/storage.upload.target": "",
            "cdi.kubevirt.io/storage.contentType": content}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class, "volumeMode": mode,
                 "resources": {"requests": {"storage": size}}}})
    poll("the PVC's upload pod to be ready",
         lambda: annotations(name).get("cdi.kubevirt.io/storage.pod.ready") == "true")

cdi_config = custom.get_cluster_custom_object("cdi.kubevirt.io", "v1beta1", "cdiconfigs", "config")
url = (cdi_config.get("spec") or {}).get("uploadProxyURLOverride") or \
    (cdi_config.get("status") or {}).get("uploadProxyURL")
if not url:
    raise SystemExit("CDIConfig config has no upload proxy URL")
if "://" not in url:
    url = "https://" + url

token_request = custom.create_namespaced_custom_object(
    "upload.cdi.kubevirt.io", "v1beta1", ns, "uploadtokenrequests", {
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"generateName": "token-for-virtctl-"}, "spec": {"pvcName": name}})
token = token_request["status"]["token"]

proxy = urllib.parse.urlparse(url)
insecure = ssl._create_unverified_context()  # virtctl --insecure


def request(method, route, body=None, length=None):
    conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 443, context=insecure, timeout=600)
    headers = {"Authorization": "Bearer " + token}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(length)
    conn.request(method, route, body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, text


status, _ = request("HEAD", "/v1beta1/upload-async")
route, mode_used = ("/v1beta1/upload-async", "async") if status == 200 else ("/v1beta1/upload", "sync")
with open(path, "rb") as f:
    status, text = request("POST", route, body=f, length=os.path.getsize(path))
if status != 200:
    raise SystemExit("upload failed: %d %s" % (status, text))
if "--no-wait" not in sys.argv:
    poll("the upload to be processed",
         lambda: annotations(name).get("cdi.kubevirt.io/storage.pod.phase") == "Succeeded", timeout=600)
print("uploaded", mode_used, status)
