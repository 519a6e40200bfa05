//! How the fuzzer sends a generated request and judges its answer: logpipe's own ingest, or (a
//! third of the NDJSON bodies) the same lines as an Elasticsearch bulk; 2xx or a 4xx in the
//! route's error shape; how many events the answer says were accepted.

use super::gen;

/// A third of the NDJSON bodies go as an Elasticsearch bulk of the same lines (`POST /_bulk`),
/// so the bulk decoder and its field mapping take the same hostile values through the whole
/// path. Chosen by the body's length, not the generator's random stream: a kept seed replays the
/// same inputs the same way.
pub fn as_bulk(req: &gen::IngestRequest) -> bool {
    req.content_type == "application/x-ndjson" && req.body.len().is_multiple_of(3)
}

/// NDJSON lines as `create` actions, one per line that is not blank (both readers skip those).
pub fn bulk_of(ndjson: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ndjson.len() * 2);
    for line in ndjson.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.extend_from_slice(b"{\"create\":{}}\n");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

pub async fn send(
    http: &reqwest::Client,
    gateway: &str,
    req: &gen::IngestRequest,
) -> Result<(u16, String), String> {
    let (url, body) = match &req.service_query {
        _ if as_bulk(req) => (format!("{gateway}/_bulk"), bulk_of(&req.body)),
        Some(s) => (
            format!("{gateway}/api/v1/logs?service={s}"),
            req.body.clone(),
        ),
        None => (format!("{gateway}/api/v1/logs"), req.body.clone()),
    };
    let resp = http
        .post(url)
        .header("content-type", req.content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("body cut off: {e}"))?;
    Ok((status, body))
}

/// 2xx or a 4xx with the error body; nothing else.
/// What is wrong with an answer, if anything: 2xx, or a 4xx with the route's error body.
pub fn check_answer(req: &gen::IngestRequest, status: u16, body: &str) -> Option<String> {
    if (200..300).contains(&status) {
        return None;
    }
    if !(400..500).contains(&status) {
        let head: String = String::from_utf8_lossy(&req.body)
            .chars()
            .take(300)
            .collect();
        return Some(format!(
            "status {status} ({body}) for a {} body: {head}",
            req.content_type
        ));
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let shaped = if as_bulk(req) {
        // Elasticsearch's error object, as its clients read it.
        v["error"]["type"].is_string() && v["error"]["reason"].is_string() && v["status"] == status
    } else {
        v["error"].is_string() && v["detail"].is_string()
    };
    (!shaped).then(|| format!("status {status} without an error body: {body}"))
}

pub fn accepted_count(body: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["accepted"].as_u64())
        .unwrap_or(0) as usize
}

/// The items of a bulk answer that were stored (status 201).
pub fn bulk_created(body: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter_map(|i| i.as_object()?.values().next()?["status"].as_u64())
            .filter(|s| *s == 201)
            .count()
    })
}
