//! A fault-injecting HTTP proxy between the SDK and the emulator: it answers
//! chosen calls with real Kinesis error responses, 5xx, latency, a connection
//! reset mid-response, or never at all, and records every call per shard.
//! SubscribeToShard's event stream passes through; a fault relays its first
//! event and then forges what the emulator never sends: a shard end with
//! children, an exception event, or silence.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What to do to a call instead of (or besides) forwarding it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// HTTP 400 with a Kinesis JSON error of this type.
    Kinesis(&'static str),
    /// This HTTP status with an empty JSON body.
    Status(u16),
    /// Forward after waiting this long.
    Latency(Duration),
    /// Forward, then cut the connection halfway through the response body.
    Reset,
    /// Accept and never answer.
    BlackHole,
    /// A signature refused for its time (the proxy's clock is set apart).
    SignatureExpired,
    /// SubscribeToShard: after the first event, the shard's end as AWS sends
    /// it: no records, no continuation, these children (id, parents).
    EndShard(Vec<(String, Vec<String>)>),
    /// SubscribeToShard: after the first event, an exception event of this
    /// type (ResourceInUseException when another subscription takes over).
    StreamException(&'static str),
    /// SubscribeToShard: after the first event, nothing, the connection open.
    Stall,
}

/// Which calls get a fault, how often.
#[derive(Debug, Clone)]
pub struct Rule {
    operation: Option<&'static str>,
    shard: Option<String>,
    fault: Fault,
    probability: f64,
    times: Option<u32>,
    after: u32,
}

impl Rule {
    pub fn new(fault: Fault) -> Self {
        Self {
            operation: None,
            shard: None,
            fault,
            probability: 1.0,
            times: None,
            after: 0,
        }
    }

    /// Only this API operation, e.g. `GetRecords`.
    pub fn on(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Only calls for this shard.
    pub fn shard(mut self, shard: impl Into<String>) -> Self {
        self.shard = Some(shard.into());
        self
    }

    /// Each matching call gets the fault with this probability (seeded).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// At most this many times.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Not before this many matching calls went through untouched.
    pub fn after(mut self, n: u32) -> Self {
        self.after = n;
        self
    }
}

/// One call as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub operation: String,
    pub shard: Option<String>,
    pub at: Instant,
    pub fault: Option<Fault>,
    /// The request body, for GetShardIterator calls.
    pub request: Option<serde_json::Value>,
}

struct State {
    upstream: Mutex<String>,
    rules: Mutex<Vec<(Rule, u32)>>,
    /// Shard iterator -> shard, learnt from the responses passing through.
    iterators: Mutex<HashMap<String, String>>,
    calls: Mutex<Vec<Call>>,
    /// How far the clock the proxy plays Kinesis with is ahead of this one.
    clock_ahead: Mutex<Option<Duration>>,
    /// Bumped on every call, so tests can wait for calls instead of sleeping.
    seen: tokio::sync::watch::Sender<usize>,
    rng: Mutex<fastrand::Rng>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`; the
    /// random choices of rules follow `seed`.
    pub async fn start(upstream: &str, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(State {
            upstream: Mutex::new(upstream.to_owned()),
            rules: Mutex::new(Vec::new()),
            iterators: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            clock_ahead: Mutex::new(None),
            seen: tokio::sync::watch::channel(0).0,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self { endpoint, state, task }
    }

    pub fn add(&self, rule: Rule) {
        self.state.rules.lock().expect("lock").push((rule, 0));
    }

    pub fn clear(&self) {
        self.state.rules.lock().expect("lock").clear();
    }

    pub fn set_upstream(&self, upstream: &str) {
        *self.state.upstream.lock().expect("lock") = upstream.to_owned();
    }

    /// Plays a Kinesis whose clock is `ahead` of this machine's: every
    /// answer's `Date` shows that clock, and a call signed more than five
    /// minutes from it is refused, as Kinesis refuses it.
    pub fn set_clock_ahead(&self, ahead: Duration) {
        *self.state.clock_ahead.lock().expect("lock") = Some(ahead);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("lock").clone()
    }

    /// Waits until the calls seen so far satisfy `done`.
    pub async fn until(&self, mut done: impl FnMut(&[Call]) -> bool) {
        let mut seen = self.state.seen.subscribe();
        while !done(&self.calls()) {
            seen.changed().await.expect("the proxy is running");
        }
    }

    /// When GetRecords was called for `shard`, in order.
    pub fn get_records_times(&self, shard: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter(|c| c.operation == "GetRecords" && c.shard.as_deref() == Some(shard))
            .map(|c| c.at)
            .collect()
    }

    /// How many calls got `fault`.
    pub fn injected(&self, fault: &Fault) -> usize {
        self.calls().iter().filter(|c| c.fault.as_ref() == Some(fault)).count()
    }

    /// A Kinesis client that goes through the proxy.
    pub fn client(&self) -> aws_sdk_kinesis::Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "fault-proxy"))
            .build();
        aws_sdk_kinesis::Client::from_conf(config)
    }
}

impl State {
    fn pick(&self, operation: &str, shard: Option<&str>) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("lock");
        let mut rng = self.rng.lock().expect("lock");
        for (rule, seen) in rules.iter_mut() {
            if rule.operation.is_some_and(|op| op != operation)
                || rule.shard.as_deref().is_some_and(|s| Some(s) != shard)
            {
                continue;
            }
            *seen += 1;
            if *seen <= rule.after || rule.times == Some(0) || rng.f64() >= rule.probability {
                continue;
            }
            if let Some(times) = &mut rule.times {
                *times -= 1;
            }
            return Some(rule.fault.clone());
        }
        None
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
        .to_owned();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let shard = match operation.as_str() {
        "GetShardIterator" | "SubscribeToShard" => json["ShardId"].as_str().map(str::to_owned),
        "GetRecords" => json["ShardIterator"]
            .as_str()
            .and_then(|it| state.iterators.lock().expect("lock").get(it).cloned()),
        _ => None,
    };
    let ahead = *state.clock_ahead.lock().expect("lock");
    let server_now = ahead.map(|ahead| std::time::SystemTime::now() + ahead);
    let fault = match server_now {
        Some(server) if !signed_near(&parts.headers, server) => Some(Fault::SignatureExpired),
        _ => state.pick(&operation, shard.as_deref()),
    };
    state.calls.lock().expect("lock").push(Call {
        operation: operation.clone(),
        shard: shard.clone(),
        at: Instant::now(),
        fault: fault.clone(),
        request: (operation == "GetShardIterator").then(|| json.clone()),
    });
    state.seen.send_modify(|n| *n += 1);
    let response = answer(&state, parts, body, shard, fault).await;
    Ok(match server_now {
        Some(server) => with_date(response, server),
        None => response,
    })
}

/// Whether the request was signed within five minutes of `server`.
fn signed_near(headers: &hyper::HeaderMap, server: std::time::SystemTime) -> bool {
    let Some(stamp) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // 20261202T183512Z -> 2026-12-02T18:35:12Z
    if stamp.len() != 16 {
        return false;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let Ok(signed) = DateTime::from_str(&rfc3339, DateTimeFormat::DateTime) else {
        return false;
    };
    let Ok(signed) = std::time::SystemTime::try_from(signed) else {
        return false;
    };
    let off = server.duration_since(signed).unwrap_or_else(|e| e.duration());
    off <= Duration::from_secs(300)
}

fn with_date(mut response: Response<Body>, server: std::time::SystemTime) -> Response<Body> {
    let date = DateTime::from(server).fmt(DateTimeFormat::HttpDate).expect("formats");
    response.headers_mut().insert(
        "date",
        hyper::header::HeaderValue::from_str(&date).expect("a header value"),
    );
    response
}

async fn answer(
    state: &State,
    parts: hyper::http::request::Parts,
    body: Bytes,
    shard: Option<String>,
    fault: Option<Fault>,
) -> Response<Body> {
    match &fault {
        Some(Fault::SignatureExpired) => {
            let body = serde_json::json!({
                "__type": "InvalidSignatureException",
                "message": "Signature expired: the request's time is more than 5 minutes from the server's"
            })
            .to_string();
            return full(StatusCode::BAD_REQUEST, body);
        }
        Some(Fault::Kinesis(code)) => {
            let body = serde_json::json!({"__type": code, "message": format!("injected {code}")}).to_string();
            return full(StatusCode::BAD_REQUEST, body);
        }
        Some(Fault::Status(status)) => {
            return full(StatusCode::from_u16(*status).expect("status"), "{}");
        }
        Some(Fault::BlackHole) => futures::future::pending::<()>().await,
        Some(Fault::Latency(delay)) => tokio::time::sleep(*delay).await,
        Some(Fault::Reset | Fault::EndShard(_) | Fault::StreamException(_) | Fault::Stall) | None => {}
    }

    let upstream = state.upstream.lock().expect("lock").clone();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut forward = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let forward = forward.body(Full::new(body)).expect("request");
    let response = match state.client.request(forward).await {
        Ok(response) => response,
        // The emulator is down: what a load balancer in front of it would say.
        Err(_) => return full(StatusCode::SERVICE_UNAVAILABLE, "{}"),
    };
    let (parts, body) = response.into_parts();
    if parts.status.is_success() && parts.headers.get("content-type").is_some_and(|v| v == EVENT_STREAM) {
        return Response::from_parts(parts, event_stream(body, fault));
    }
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return full(StatusCode::SERVICE_UNAVAILABLE, "{}");
    };
    if let Some(shard) = &shard {
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        for field in ["ShardIterator", "NextShardIterator"] {
            if let Some(iterator) = answer[field].as_str() {
                state
                    .iterators
                    .lock()
                    .expect("lock")
                    .insert(iterator.to_owned(), shard.clone());
            }
        }
    }
    let body: Body = if fault == Some(Fault::Reset) {
        // Half the body, then an error: hyper drops the connection mid-response.
        let half = body.slice(..body.len() / 2);
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(half)), Err("injected connection reset".into())];
        StreamBody::new(futures::stream::iter(chunks)).boxed()
    } else {
        Full::new(body).map_err(|never| match never {}).boxed()
    };
    Response::from_parts(parts, body)
}

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// A SubscribeToShard event stream, passed through, or changed by `fault`
/// after its first SubscribeToShardEvent.
fn event_stream(upstream: Incoming, fault: Option<Fault>) -> Body {
    use aws_smithy_eventstream::frame::{write_message_to, DecodedFrame, MessageFrameDecoder};

    let Some(fault) = fault else {
        return upstream.map_err(|e| Box::new(e) as BoxError).boxed();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    tokio::spawn(async move {
        let mut upstream = upstream;
        let mut decoder = MessageFrameDecoder::new();
        let mut buffer = bytes::BytesMut::new();
        let send = |message: &Message| {
            let mut out = Vec::new();
            write_message_to(message, &mut out).expect("encode an event");
            Ok(Frame::data(Bytes::from(out)))
        };
        // Relay messages until the first records event has gone through.
        'relay: while let Some(Ok(frame)) = upstream.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            buffer.extend_from_slice(&data);
            while let Ok(DecodedFrame::Complete(message)) = decoder.decode_frame(&mut buffer) {
                let first_event = header(&message, ":event-type") == Some("SubscribeToShardEvent");
                if tx.send(send(&message)).await.is_err() {
                    return;
                }
                if first_event {
                    break 'relay;
                }
            }
        }
        drop(upstream);
        let forged = match fault {
            Fault::EndShard(children) => {
                let children: Vec<serde_json::Value> = children
                    .iter()
                    .map(|(id, parents)| {
                        serde_json::json!({
                            "ShardId": id,
                            "ParentShards": parents,
                            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
                        })
                    })
                    .collect();
                let payload = serde_json::json!({"Records": [], "MillisBehindLatest": 0, "ChildShards": children});
                event_message("event", ":event-type", "SubscribeToShardEvent", payload)
            }
            Fault::StreamException(code) => event_message(
                "exception",
                ":exception-type",
                code,
                serde_json::json!({"message": format!("injected {code}")}),
            ),
            // Silence: hold the stream open until the consumer gives up.
            _ => {
                tx.closed().await;
                return;
            }
        };
        let _ = tx.send(send(&forged)).await;
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) });
    StreamBody::new(frames).boxed()
}

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

fn event_message(kind: &'static str, type_header: &'static str, name: &str, payload: serde_json::Value) -> Message {
    Message::new(payload.to_string())
        .add_header(Header::new(":message-type", HeaderValue::String(kind.into())))
        .add_header(Header::new(type_header, HeaderValue::String(name.to_owned().into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
}
