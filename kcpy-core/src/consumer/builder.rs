//! Configuring a consumer, and `build`: list the shards, load their
//! checkpoints, position each shard, then start the background tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::SelectAll;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::discovery::{list_shards, sync_shards};
use super::part::{Control, Part};
use super::shards::Spawner;
use super::shutdown::Phase;
use super::startup::{load_checkpoints, save_marks};
use super::Consumer;
use crate::checkpoint::{Position, Progress, Writer};
use crate::config::Settings;
use crate::group::{Coordinator, Membership, Tally};
use crate::kinesis::{DynFanOut, DynKinesis, SdkKinesis, StreamRef};
use crate::lineage::Lineage;
use crate::read::{resolve, DynReader, FanOut, FanOutReader, PollingReader};
use crate::signal::Fatal;
use crate::telemetry::{Durable, Events, StreamMetrics};
use crate::{CheckpointMode, CheckpointStore, Error, LeaseStore, Record, SequenceNumber, StartPosition};

/// Configures a [`Consumer`]; made by [`Consumer::builder`].
#[must_use]
pub struct ConsumerBuilder {
    api: DynKinesis,
    stream: String,
    store: Option<Arc<dyn CheckpointStore>>,
    leases: Option<Arc<dyn LeaseStore>>,
    shutdown: Option<CancellationToken>,
    settings: Settings,
    /// How shards are read; polling unless set.
    reader: Option<DynReader>,
    fan_out: Option<FanOut>,
    fan_out_api: Option<DynFanOut>,
    /// Streams read besides the first.
    more: Vec<StreamSpec>,
}

/// One more stream for a consumer to read ([`ConsumerBuilder::add_stream`]):
/// a name or an ARN, and optionally its own client and start position.
#[derive(Clone)]
#[must_use]
pub struct StreamSpec {
    stream: String,
    apis: Option<(DynKinesis, DynFanOut)>,
    start_position: Option<StartPosition>,
}

impl std::fmt::Debug for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSpec")
            .field("stream", &self.stream)
            .field("own_client", &self.apis.is_some())
            .field("start_position", &self.start_position)
            .finish()
    }
}

impl StreamSpec {
    /// The stream `stream` (a name or an ARN), read with the builder's client
    /// and start position unless set here.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            apis: None,
            start_position: None,
        }
    }

    /// Reads this stream with `client`: another account's credentials (an
    /// assumed role), or another region. Used as [`Consumer::builder`]
    /// describes.
    pub fn client(mut self, client: aws_sdk_kinesis::Client) -> Self {
        let sdk = Arc::new(SdkKinesis::new(&client));
        self.apis = Some((Arc::clone(&sdk) as DynKinesis, sdk as DynFanOut));
        self
    }

    /// Where this stream's shards without a checkpoint start (default: the
    /// builder's [`start_position`](ConsumerBuilder::start_position)).
    pub fn start_position(mut self, position: StartPosition) -> Self {
        self.start_position = Some(position);
        self
    }
}

impl From<&str> for StreamSpec {
    fn from(stream: &str) -> Self {
        Self::new(stream)
    }
}

impl From<String> for StreamSpec {
    fn from(stream: String) -> Self {
        Self::new(stream)
    }
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("stream", &self.stream)
            .field("more_streams", &self.more)
            .field("store", &self.store)
            .field("lease_store", &self.leases)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn with_api(api: DynKinesis, stream: String) -> Self {
        Self {
            api,
            stream,
            store: None,
            leases: None,
            shutdown: None,
            settings: Settings::default(),
            reader: None,
            fan_out: None,
            fan_out_api: None,
            more: Vec::new(),
        }
    }

    pub(crate) fn with_fan_out_api(mut self, api: DynFanOut) -> Self {
        self.fan_out_api = Some(api);
        self
    }

    /// Reads shards with `reader` instead of polling (tests of the seam).
    #[cfg(test)]
    pub(crate) fn reader(mut self, reader: DynReader) -> Self {
        self.reader = Some(reader);
        self
    }

    /// Also reads `stream` (a name, an ARN, or a [`StreamSpec`] with its own
    /// client or start position): one consumer, one [`Stream`](futures::Stream)
    /// of records from every stream, each record naming its
    /// [`stream`](Record::stream). Each stream has its own shards, lineage
    /// and resharding; all share the settings, the checkpoint store (keyed
    /// by stream name, as for a consumer of one stream, so a stream's
    /// checkpoints are the same whether it is read alone or with others)
    /// and, with a [`lease_store`](Self::lease_store), the group, which
    /// balances the shards of every stream together.
    ///
    /// Two streams of the same name (in different accounts or regions)
    /// would share checkpoints: `build` refuses them.
    pub fn add_stream(mut self, stream: impl Into<StreamSpec>) -> Self {
        self.more.push(stream.into());
        self
    }

    /// Reads with enhanced fan-out (SubscribeToShard) through the stream
    /// consumer `fan_out` names, instead of polling with GetRecords (the
    /// default). Records are pushed as they arrive, and the stream consumer
    /// has a read budget of its own (2 MiB/s per shard) instead of sharing
    /// one with every polling reader. Checkpoints, resharding, consumer
    /// groups and shutdown work as with polling.
    ///
    /// `build` registers the stream consumer if asked ([`FanOut::register`])
    /// and waits until it is ACTIVE. On AWS, SubscribeToShard needs HTTP/2:
    /// the SDK's default HTTPS client negotiates it; a client limited to
    /// HTTP/1.1 works only with emulators.
    pub fn fan_out(mut self, fan_out: FanOut) -> Self {
        self.fan_out = Some(fan_out);
        self
    }

    /// The name checkpoints are kept under (default `kcpy`). Consumers with
    /// different names read the same stream independently.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.settings.consumer_name = name.into();
        self
    }

    /// Where checkpoints are kept. Without a store nothing is checkpointed and
    /// every run starts at the start position. Replaces a
    /// [`lease_store`](Self::lease_store) set before.
    pub fn checkpoint_store(mut self, store: impl CheckpointStore) -> Self {
        self.store = Some(Arc::new(store));
        self.leases = None;
        self
    }

    /// Joins a consumer group: this process reads only the shards it holds a
    /// lease for in `store`, which also keeps the checkpoints (replacing a
    /// [`checkpoint_store`](Self::checkpoint_store) set before). Processes
    /// with the same consumer name and store split the stream's shards
    /// between them, and take over those of a process that stops.
    ///
    /// Without a lease store this process reads every shard.
    pub fn lease_store<S: LeaseStore + CheckpointStore>(mut self, store: S) -> Self {
        let store = Arc::new(store);
        self.store = Some(Arc::clone(&store) as Arc<dyn CheckpointStore>);
        self.leases = Some(store);
        self
    }

    /// This process's id in its consumer group; it must be unique among the
    /// group's live processes (default: host name, process id and a random
    /// suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.settings.worker_id = id.into();
        self
    }

    /// How long a lease lasts without renewal (default 20 s): a stopped
    /// process's shards are taken over within this plus two renew intervals,
    /// and a process that cannot renew stops reading a shard after this long.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.settings.lease_duration = duration;
        self
    }

    /// How often leases are renewed and the group balanced (default 5 s; at
    /// most half the lease duration).
    pub fn lease_renew_interval(mut self, interval: Duration) -> Self {
        self.settings.lease_renew_interval = interval;
        self
    }

    /// Keep the leases of finished shards in the lease store (default: they
    /// are deleted once every child shard has a checkpoint of its own, or
    /// once the shard is past the stream's retention, as the KCL does).
    pub fn keep_finished_leases(mut self, keep: bool) -> Self {
        self.settings.keep_finished_leases = keep;
        self
    }

    /// Where shards without a checkpoint start (default
    /// [`StartPosition::TrimHorizon`]).
    pub fn start_position(mut self, position: StartPosition) -> Self {
        self.settings.start_position = position;
        self
    }

    /// Whether KPL aggregated records are split into their user records
    /// (default true). Each user record is delivered on its own, with its
    /// [`sub_sequence_number`](crate::Record::sub_sequence_number), and
    /// checkpoints keep the place inside an aggregate. Off, an aggregate is
    /// delivered as the one Kinesis record it is.
    pub fn deaggregate(mut self, deaggregate: bool) -> Self {
        self.settings.deaggregate = deaggregate;
        self
    }

    /// Drop a whole KPL aggregate when one of its user records hashes
    /// outside the shard it was read from (default false: delivered, each
    /// such record flagged by [`Aggregate::Member`](crate::Aggregate::Member)'s
    /// `outside_shard`). KCL's behaviour, for KPL producers: a KPL that
    /// aggregated by a stale shard map puts those user records again
    /// itself, so without this they are seen twice. Other aggregators
    /// never put them again; with them this loses data.
    pub fn drop_aggregates_outside_shard(mut self, drop: bool) -> Self {
        self.settings.drop_aggregates_outside_shard = drop;
        self
    }

    /// When records count as processed (default [`CheckpointMode::Auto`]).
    pub fn checkpoint_mode(mut self, mode: CheckpointMode) -> Self {
        self.settings.checkpoint_mode = mode;
        self
    }

    /// Write checkpoints after this many processed records (default 1000).
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.settings.checkpoint_every = records;
        self
    }

    /// Write checkpoints at least this often while records are processed
    /// (default 5 s).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.settings.checkpoint_interval = interval;
        self
    }

    /// How often a failing checkpoint save is retried before the consumer
    /// stops with the error (default 5).
    pub fn checkpoint_retries(mut self, retries: u32) -> Self {
        self.settings.checkpoint_retries = retries;
        self
    }

    /// How often a shard that has caught up with the tip polls (default 1 s):
    /// at its moments, one interval apart, the first of them between half an
    /// interval and one and a half after its last records.
    pub fn idle_interval(mut self, interval: Duration) -> Self {
        self.settings.idle_interval = interval;
        self
    }

    /// How many caught-up shards poll at the same moments (default 1: each
    /// shard at moments of its own, spread over the idle interval). The
    /// polls of a group share one wakeup of the process, which costs about
    /// as much CPU as an empty poll itself, and reach Kinesis together; the
    /// groups' moments are spread over the interval. A large group brings
    /// back what spreading avoids: its shards' calls in one burst, each on a
    /// connection of its own.
    pub fn idle_poll_group(mut self, shards: usize) -> Self {
        self.settings.idle_poll_group = shards;
        self
    }

    /// GetRecords calls per second per shard, 1 to 5 (default 5, Kinesis'
    /// limit). Every application reading a shard shares that limit: set this
    /// lower when others read the same stream.
    pub fn max_get_records_per_second(mut self, calls: u32) -> Self {
        self.settings.max_get_records_per_second = calls;
        self
    }

    /// Records asked for per GetRecords call, 1 to 10000 (default 10000).
    pub fn max_records_per_call(mut self, records: i32) -> Self {
        self.settings.max_records_per_call = records;
        self
    }

    /// Batches fetched ahead per shard (default 2). Per shard at most this
    /// many batches wait, plus the one being handed out and the one being
    /// fetched: memory is bounded by that, whatever the backlog.
    pub fn prefetch_batches(mut self, batches: usize) -> Self {
        self.settings.prefetch_batches = batches;
        self
    }

    /// In [`CheckpointMode::Manual`], the most records per shard that may be
    /// delivered and not yet covered by its checkpoint (default 100,000). A
    /// shard at this many hands out no further batch until acknowledgements
    /// bring it below: backpressure, so a record never acknowledged holds
    /// its shard back instead of growing memory without bound. A batch is
    /// handed out whole, so a shard may pass it by up to one batch.
    pub fn max_unacknowledged(mut self, records: usize) -> Self {
        self.settings.max_unacknowledged = records;
        self
    }

    /// How long credentials may keep failing to resolve (an assumed role
    /// denied, the metadata service down) before the stream ends with
    /// [`Error::Credentials`] (default 5 min). Until then such failures are
    /// retried like any transient fault; `build` gives up after its
    /// [`startup_retries`](Self::startup_retries).
    pub fn credentials_timeout(mut self, timeout: Duration) -> Self {
        self.settings.credentials_timeout = timeout;
        self
    }

    /// Time limit for one Kinesis call; a call over it is retried (default 20 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// First and largest delay between retries of a failed call (defaults
    /// 100 ms and 10 s); delays double per attempt, with jitter.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max;
        self
    }

    /// How often `build` retries a transiently failing call before giving up
    /// with [`Error::Unavailable`] (default 8).
    pub fn startup_retries(mut self, retries: u32) -> Self {
        self.settings.startup_retries = retries;
        self
    }

    /// How long shutdown may take to write the last checkpoints (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// How often the shards are listed again to find new ones (default 60 s).
    /// A shard's end announces its children at once; this catches the rest.
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.settings.shard_sync_interval = interval;
        self
    }

    /// A token whose cancellation shuts the consumer down, as
    /// [`ShutdownHandle::shutdown`](super::ShutdownHandle::shutdown) does.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Checks the configuration, finds the shards, loads their checkpoints and
    /// positions each shard, then starts reading.
    ///
    /// With [`StartPosition::Latest`], every record written after `build`
    /// returns is delivered.
    pub async fn build(self) -> Result<Consumer, Error> {
        self.settings.validate()?;
        crate::read::hint_allocator();
        if let Some(fan_out) = &self.fan_out {
            fan_out.validate()?;
        }
        let mut sources = vec![Source {
            stream: StreamRef::parse(&self.stream)?,
            api: Arc::clone(&self.api),
            fan_out_api: self.fan_out_api.clone(),
            start_position: self.settings.start_position,
        }];
        for spec in self.more {
            let stream = StreamRef::parse(&spec.stream)?;
            if sources.iter().any(|source| source.stream.name == stream.name) {
                return Err(Error::config(format!(
                    "the stream {:?} is configured twice: streams read by one consumer need different names, as checkpoints are kept by name",
                    stream.name
                )));
            }
            let (api, fan_out_api) = match spec.apis {
                Some((api, fan_out_api)) => (api, Some(fan_out_api)),
                None => (Arc::clone(&self.api), self.fan_out_api.clone()),
            };
            sources.push(Source {
                stream,
                api,
                fan_out_api,
                start_position: spec.start_position.unwrap_or(self.settings.start_position),
            });
        }
        if let Some(problem) = sources.iter().find_map(|source| source.api.unusable()) {
            return Err(Error::config(problem));
        }
        let shared = Shared {
            fatal: Fatal::new(self.shutdown.map_or_else(CancellationToken::new, |t| t.child_token())),
            events: Events::new(),
            store: self.store,
            leases: self.leases,
            reader: self.reader,
            fan_out: self.fan_out,
            tally: Arc::default(),
            epoch: tokio::time::Instant::now(),
        };
        let mut parts = Vec::with_capacity(sources.len());
        for source in sources {
            let mut settings = self.settings.clone();
            settings.start_position = source.start_position;
            let index = parts.len();
            parts.push(build_part(source, index, Arc::new(settings), &shared).await?);
        }
        Ok(Consumer::new(parts))
    }
}

/// One stream to read, and how.
struct Source {
    stream: StreamRef,
    api: DynKinesis,
    fan_out_api: Option<DynFanOut>,
    start_position: StartPosition,
}

/// What every stream's part shares.
struct Shared {
    fatal: Fatal,
    events: Events,
    store: Option<Arc<dyn CheckpointStore>>,
    leases: Option<Arc<dyn LeaseStore>>,
    reader: Option<DynReader>,
    fan_out: Option<FanOut>,
    /// The group's counts of every stream, for balancing them together.
    tally: Arc<Tally>,
    /// Where the moments of idle polls are counted from, for every stream.
    epoch: tokio::time::Instant,
}

/// Lists one stream's shards, loads their checkpoints, positions each shard
/// and starts the stream's background tasks.
async fn build_part(source: Source, index: usize, settings: Arc<Settings>, shared: &Shared) -> Result<Part, Error> {
    let stream = Arc::new(source.stream);
    let api = source.api;
    let store = shared.store.clone();
    let leases = shared.leases.clone();
    let span = tracing::info_span!("kcpy", stream = %stream.name, consumer = %settings.consumer_name);

    let shards = list_shards(&api, &stream, &settings).instrument(span.clone()).await?;
    let checkpoints = match &store {
        Some(store) => {
            load_checkpoints(store.as_ref(), &stream, &settings, &shards)
                .instrument(span.clone())
                .await?
        }
        None => HashMap::new(),
    };
    let known = leases.is_some().then(|| shards.clone());
    let (lineage, starts) = match leases {
        // Nothing starts before its lease is taken.
        Some(_) => (
            Lineage::leased(shards, &checkpoints, settings.start_position, SystemTime::now()),
            Vec::new(),
        ),
        None => Lineage::new(shards, &checkpoints, settings.start_position, SystemTime::now()),
    };
    // Starts at LATEST are saved before they are resolved: a restart, even
    // one before any record came, resumes at this start, not a later tip.
    if let Some(store) = &store {
        save_marks(store.as_ref(), &stream, &settings, &starts)
            .instrument(span.clone())
            .await?;
    }
    let reader: DynReader = match (&shared.reader, &shared.fan_out, source.fan_out_api) {
        (Some(reader), _, _) => Arc::clone(reader),
        (None, Some(fan_out), Some(fan_out_api)) => {
            let consumer = resolve(&fan_out_api, &stream, fan_out, &settings)
                .instrument(span.clone())
                .await?;
            tracing::info!(parent: &span, consumer = %consumer.arn, "reading with enhanced fan-out");
            Arc::new(FanOutReader {
                api: fan_out_api,
                kinesis: Arc::clone(&api),
                settings: Arc::clone(&settings),
                consumer,
                stall: fan_out.stall(),
            })
        }
        (None, Some(_), None) => return Err(Error::config("this client cannot read with enhanced fan-out")),
        (None, None, _) => Arc::new(PollingReader::new(
            Arc::clone(&api),
            Arc::clone(&settings),
            shared.epoch,
            index,
        )),
    };
    reader.prepare(&stream, &starts).instrument(span.clone()).await?;

    let fatal = shared.fatal.clone();
    let (control_tx, control) = mpsc::unbounded_channel();
    let relist = Arc::new(Notify::new());
    let membership = leases.map(|leases| {
        let events = Control::outbox(&control_tx, Control::Group);
        let membership = Membership::new(leases, &settings, &stream.name, events, Arc::clone(&relist));
        membership.listed(known.as_deref().unwrap_or_default());
        membership
    });
    let durable = Durable::new(&stream.name);
    for (shard, checkpoint) in &checkpoints {
        durable.set(shard, checkpoint);
    }
    let stream_metrics = StreamMetrics::new(&stream.name);
    let (progress, writer) = match store {
        Some(store) => {
            let (progress, commands) = Progress::new(&settings, fatal.clone(), durable.clone());
            let writer = Writer {
                durable: durable.clone(),
                metrics: StreamMetrics::new(&stream.name),
                store,
                progress: Arc::clone(&progress),
                commands,
                settings: Arc::clone(&settings),
                stream_name: stream.name.clone(),
                fatal: fatal.clone(),
                ended: Control::outbox(&control_tx, Control::EndSaved),
                membership: membership.clone(),
            };
            let task = tokio::spawn(writer.run().instrument(span.clone()));
            (Some(progress), Some(task))
        }
        None => (None, None),
    };
    let sync = tokio::spawn(
        {
            let fatal = fatal.clone();
            let sync = sync_shards(
                Arc::clone(&api),
                Arc::clone(&stream),
                Arc::clone(&settings),
                Control::outbox(&control_tx, Control::Listed),
                fatal.clone(),
                Arc::clone(&relist),
            );
            async move {
                if let Err(error) = crate::error::catch_panic("shard sync", sync).await {
                    fatal.report("shard sync", error);
                }
            }
        }
        .instrument(span.clone()),
    );

    let spawner = Spawner {
        gated: progress.is_some() && settings.checkpoint_mode == CheckpointMode::Manual,
        reader,
        stream: Arc::clone(&stream),
        stream_name: Arc::from(stream.name.as_str()),
        behind: Arc::default(),
        settings: Arc::clone(&settings),
        fatal: fatal.clone(),
        span: span.clone(),
    };
    let mut starts = starts;
    starts.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let mut slots = Vec::with_capacity(starts.len());
    let mut streams = SelectAll::new();
    for start in starts {
        let (stream, slot) = spawner.spawn(slots.len(), start);
        streams.push(stream);
        slots.push(slot);
    }
    let coordinator = membership.as_ref().map(|membership| {
        let coordinator = Coordinator::new(
            Arc::clone(membership),
            Arc::clone(&settings),
            fatal.clone(),
            Arc::clone(&shared.tally),
        );
        AbortOnDropHandle::new(tokio::spawn(coordinator.run().instrument(span.clone())))
    });
    tracing::info!(parent: &span, shards = slots.len(), "consumer started");
    let track = progress.is_some() && settings.checkpoint_mode == CheckpointMode::Auto;
    Ok(Part {
        shards: streams,
        current: None,
        slots,
        dirty: Vec::new(),
        in_flight: None,
        in_flight_at: Box::new(Position::of(&Record::new(
            "",
            SequenceNumber::parse("0").map_err(|e| Error::config(e.to_string()))?,
            "",
            bytes::Bytes::new(),
        ))),
        since_flush: 0,
        progress,
        track,
        writer,
        shutdown_signal: Box::pin(fatal.token().clone().cancelled_owned()),
        fatal,
        phase: Phase::Running,
        error: None,
        lineage,
        spawner,
        control,
        _sync: AbortOnDropHandle::new(sync),
        relist,
        membership,
        _coordinator: coordinator,
        settings,
        stream,
        events: shared.events.clone(),
        stream_metrics,
        durable,
        past: HashMap::new(),
    })
}
