//! Client requests: SUBSCRIBE (with Binance-style answers), acks of trades
//! and of diffs, and timer reports.

use serde_json::Value;

/// What a client text message asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Subscribe to these (all known) streams; answer with `response`.
    Subscribe {
        /// Streams to add.
        streams: Vec<String>,
        /// `{"result":null,"id":…}`.
        response: String,
    },
    /// A request to answer with an error and otherwise ignore.
    Rejected {
        /// `{"error":{…},"id":…}`.
        response: String,
    },
    /// An ack of trade `t` on `stream`.
    Ack {
        /// Stream name.
        stream: String,
        /// Trade id.
        t: u64,
    },
    /// An ack of the diff whose final update id is `u` on diff stream `stream`.
    DepthAck {
        /// Stream name (`<symbol>@depth[@100ms]`).
        stream: String,
        /// The diff's `u`.
        u: u64,
    },
    /// A bot's report that its timer `key` fired (the test feed's way of
    /// counting timers from outside the bot).
    Timer { key: String },
    /// Anything else (counted, ignored); the reason if it looked like a bad ack.
    Other(Option<String>),
}

/// `{"error":{"code":…,"msg":"…"},"id":…}` with Binance's key order.
fn error_response(code: i64, msg: String, id: &Value) -> String {
    format!(
        "{{\"error\":{{\"code\":{code},\"msg\":{}}},\"id\":{id}}}",
        Value::String(msg)
    )
}

/// Interpret a client text message; `Err` if it is not JSON at all.
pub fn interpret(text: &str, known_streams: &[String]) -> Result<Request, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    let method = value.get("method").and_then(Value::as_str);
    match method {
        Some("SUBSCRIBE") => {
            let id = value.get("id").cloned().unwrap_or(Value::Null);
            let Some(params) = value.get("params").and_then(Value::as_array) else {
                let msg = "invalid request: params must be an array of stream names".to_owned();
                return Ok(Request::Rejected {
                    response: error_response(2, msg, &id),
                });
            };
            let mut streams = Vec::with_capacity(params.len());
            for param in params {
                match param.as_str() {
                    Some(s) if known_streams.iter().any(|k| k == s) => {
                        if !streams.iter().any(|x: &String| x == s) {
                            streams.push(s.to_owned());
                        }
                    }
                    other => {
                        let name = other.map_or_else(|| param.to_string(), str::to_owned);
                        return Ok(Request::Rejected {
                            response: error_response(2, format!("unknown stream {name}"), &id),
                        });
                    }
                }
            }
            let response = format!("{{\"result\":null,\"id\":{id}}}");
            Ok(Request::Subscribe { streams, response })
        }
        Some("ack") => {
            let stream = value.get("stream").and_then(Value::as_str);
            let depth = stream.is_some_and(crate::depth::is_depth_stream);
            let id = value
                .get(if depth { "u" } else { "t" })
                .and_then(Value::as_u64);
            match (stream, id) {
                (Some(stream), Some(u)) if depth => Ok(Request::DepthAck {
                    stream: stream.to_owned(),
                    u,
                }),
                (Some(stream), Some(t)) => Ok(Request::Ack {
                    stream: stream.to_owned(),
                    t,
                }),
                _ if depth => Ok(Request::Other(Some(format!(
                    "bad diff ack (needs integer u): {}",
                    truncate(text, 200)
                )))),
                _ => Ok(Request::Other(Some(format!(
                    "bad ack (needs string stream and integer t): {}",
                    truncate(text, 200)
                )))),
            }
        }
        Some("timer") => match value.get("key").and_then(Value::as_str) {
            Some(key) => Ok(Request::Timer {
                key: key.to_owned(),
            }),
            None => Ok(Request::Other(Some(format!(
                "bad timer report (needs a string key): {}",
                truncate(text, 200)
            )))),
        },
        _ => Ok(Request::Other(None)),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interprets_requests() {
        let known = vec!["btcusdt@trade".to_string(), "ethusdt@trade".to_string()];
        let sub = r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@trade"],"id":1}"#;
        assert_eq!(
            interpret(sub, &known),
            Ok(Request::Subscribe {
                streams: vec!["btcusdt@trade".into()],
                response: r#"{"result":null,"id":1}"#.into()
            })
        );
        let bad = r#"{"method":"SUBSCRIBE","params":["x@trade"],"id":7}"#;
        match interpret(bad, &known) {
            Ok(Request::Rejected { response }) => {
                assert_eq!(
                    response,
                    r#"{"error":{"code":2,"msg":"unknown stream x@trade"},"id":7}"#
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let ack = r#"{"method":"ack","stream":"btcusdt@trade","t":5}"#;
        assert_eq!(
            interpret(ack, &known),
            Ok(Request::Ack {
                stream: "btcusdt@trade".into(),
                t: 5
            })
        );
        assert!(matches!(
            interpret(r#"{"method":"ack","t":"5"}"#, &known),
            Ok(Request::Other(Some(_)))
        ));
        assert_eq!(
            interpret(
                r#"{"method":"ack","stream":"btcusdt@depth@100ms","u":1042}"#,
                &known
            ),
            Ok(Request::DepthAck {
                stream: "btcusdt@depth@100ms".into(),
                u: 1042
            })
        );
        for bad in [
            r#"{"method":"ack","stream":"btcusdt@depth","t":5}"#,
            r#"{"method":"ack","stream":"btcusdt@depth","u":-1}"#,
            r#"{"method":"ack","stream":"btcusdt@trade","u":5}"#,
        ] {
            assert!(
                matches!(interpret(bad, &known), Ok(Request::Other(Some(_)))),
                "{bad}"
            );
        }
        assert_eq!(
            interpret(r#"{"method":"timer","key":"tick-3"}"#, &known),
            Ok(Request::Timer {
                key: "tick-3".into()
            })
        );
        assert!(matches!(
            interpret(r#"{"method":"timer"}"#, &known),
            Ok(Request::Other(Some(_)))
        ));
        assert_eq!(interpret("[1,2]", &known), Ok(Request::Other(None)));
        assert!(interpret("{nope", &known).is_err());
    }
}
