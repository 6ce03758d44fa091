/* tickwire's binding to DPDK (22.11): EAL initialisation, one Ethernet port with one RX and one
 * TX queue, and a busy-poll loop that moves frames between the port and two single-producer /
 * single-consumer rings in memory the host (Python) shares with it.
 *
 * Built on first use by tickwire.drivers.dpdk (cc ... $(pkg-config --cflags --libs libdpdk)) and
 * loaded with ctypes. The ring layout is the one tickwire.drivers.dpdk describes and writes:
 *
 *   offset  size  field
 *   0       8     producer   frames written since the ring was set up (written by the producer)
 *   64      8     consumer   frames read since the ring was set up (written by the consumer)
 *   128     4     slots      a power of two
 *   132     4     slot_bytes bytes per slot, header included
 *   136     8     dropped    frames the producer could not store (ring full, frame too long)
 *   256     slots * slot_bytes: slot i & (slots - 1) holds u32 length, u32 reserved,
 *                 u64 timestamp (ns, CLOCK_REALTIME), the frame
 *
 * The RX ring's producer is the poll loop, its consumer the host; the TX ring the other way
 * round. Each side writes the slots, then publishes its index with a release store; the other
 * reads the index with an acquire load, then the slots. No call crosses into Python per frame.
 */

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#define TW_BURST 32
#define TW_PRODUCER 0
#define TW_CONSUMER 64
#define TW_SLOTS 128
#define TW_SLOT_BYTES 132
#define TW_DROPPED 136
#define TW_HEADER 256
#define TW_SLOT_HEADER 16

static char error_text[512];
static volatile int stop_flag;
static int running;
static int poll_lcore = -1;
static pthread_t poll_thread;

struct tw_loop {
    uint16_t port;
    uint8_t *rx;
    uint8_t *tx;
    struct rte_mempool *pool;
    unsigned idle_us;
};
static struct tw_loop loop_state;

/* Counters the host reads with tw_stats(). */
static volatile uint64_t stat_rx, stat_tx, stat_tx_failed, stat_polls, stat_idle_sleeps,
    stat_tx_index_errors;

static void set_error(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error_text, sizeof error_text, format, args);
    va_end(args);
}

const char *tw_error(void) { return error_text; }

static inline uint64_t *u64_at(uint8_t *ring, unsigned offset) { return (uint64_t *)(ring + offset); }
static inline uint32_t u32_at(uint8_t *ring, unsigned offset) { return *(uint32_t *)(ring + offset); }

int tw_eal_init(int argc, char **argv)
{
    int ret = rte_eal_init(argc, argv);
    if (ret < 0) {
        set_error("rte_eal_init failed: %s", rte_strerror(rte_errno));
        return -rte_errno;
    }
    return ret;
}

/* Opens port ``name`` (a vdev name such as net_af_packet0, or a PCI address): an mbuf pool of
 * ``mbufs``, one RX and one TX queue of ``descriptors``, started, promiscuous. Writes its MAC
 * address into ``mac``; returns the port id or a negative errno. */
int tw_port_open(const char *name, unsigned mbufs, unsigned descriptors, uint8_t *mac)
{
    uint16_t port;
    int ret = rte_eth_dev_get_port_by_name(name, &port);
    if (ret != 0) {
        set_error("no DPDK port %s (%d ports available)", name, rte_eth_dev_count_avail());
        return -ENODEV;
    }
    char pool_name[RTE_MEMPOOL_NAMESIZE];
    snprintf(pool_name, sizeof pool_name, "tw_mbufs_%u", port);
    struct rte_mempool *pool = rte_pktmbuf_pool_create(pool_name, mbufs, 256, 0,
                                                       RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
    if (pool == NULL) {
        set_error("rte_pktmbuf_pool_create of %u mbufs failed: %s", mbufs, rte_strerror(rte_errno));
        return -rte_errno;
    }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    if ((ret = rte_eth_dev_configure(port, 1, 1, &conf)) != 0) {
        set_error("rte_eth_dev_configure(port %u) failed: %s", port, rte_strerror(-ret));
        return ret;
    }
    uint16_t rx_descriptors = descriptors, tx_descriptors = descriptors;
    rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_descriptors, &tx_descriptors);
    int socket = rte_eth_dev_socket_id(port);
    if ((ret = rte_eth_rx_queue_setup(port, 0, rx_descriptors, socket, NULL, pool)) != 0) {
        set_error("rte_eth_rx_queue_setup failed: %s", rte_strerror(-ret));
        return ret;
    }
    if ((ret = rte_eth_tx_queue_setup(port, 0, tx_descriptors, socket, NULL)) != 0) {
        set_error("rte_eth_tx_queue_setup failed: %s", rte_strerror(-ret));
        return ret;
    }
    if ((ret = rte_eth_dev_start(port)) != 0) {
        set_error("rte_eth_dev_start failed: %s", rte_strerror(-ret));
        return ret;
    }
    rte_eth_promiscuous_enable(port);   /* not every driver can; frames to us arrive anyway */
    struct rte_ether_addr address;
    if (rte_eth_macaddr_get(port, &address) == 0)
        memcpy(mac, address.addr_bytes, 6);
    loop_state.pool = pool;
    return port;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Received frames into the RX ring; returns how many came. */
static unsigned poll_rx(struct tw_loop *s)
{
    struct rte_mbuf *pkts[TW_BURST];
    uint16_t n = rte_eth_rx_burst(s->port, 0, pkts, TW_BURST);
    if (n == 0)
        return 0;
    uint8_t *ring = s->rx;
    uint32_t slots = u32_at(ring, TW_SLOTS), slot_bytes = u32_at(ring, TW_SLOT_BYTES);
    uint64_t producer = *u64_at(ring, TW_PRODUCER);
    uint64_t consumer = __atomic_load_n(u64_at(ring, TW_CONSUMER), __ATOMIC_ACQUIRE);
    uint64_t stamp = now_ns(), dropped = 0;
    for (uint16_t i = 0; i < n; i++) {
        uint32_t length = rte_pktmbuf_pkt_len(pkts[i]);
        if (producer - consumer >= slots || length > slot_bytes - TW_SLOT_HEADER) {
            dropped++;
            continue;
        }
        uint8_t *slot = ring + TW_HEADER + (size_t)(producer & (slots - 1)) * slot_bytes;
        const void *data = rte_pktmbuf_read(pkts[i], 0, length, slot + TW_SLOT_HEADER);
        if (data != slot + TW_SLOT_HEADER)
            memcpy(slot + TW_SLOT_HEADER, data, length);
        *(uint32_t *)slot = length;
        *(uint32_t *)(slot + 4) = 0;
        *(uint64_t *)(slot + 8) = stamp;
        producer++;
    }
    rte_pktmbuf_free_bulk(pkts, n);
    if (dropped)
        __atomic_fetch_add(u64_at(ring, TW_DROPPED), dropped, __ATOMIC_RELAXED);
    __atomic_store_n(u64_at(ring, TW_PRODUCER), producer, __ATOMIC_RELEASE);
    stat_rx += n - dropped;
    return n;
}

/* Frames from the TX ring onto the port; returns how many were taken from the ring. */
static unsigned poll_tx(struct tw_loop *s)
{
    uint8_t *ring = s->tx;
    uint32_t slots = u32_at(ring, TW_SLOTS), slot_bytes = u32_at(ring, TW_SLOT_BYTES);
    uint64_t consumer = *u64_at(ring, TW_CONSUMER);
    uint64_t producer = __atomic_load_n(u64_at(ring, TW_PRODUCER), __ATOMIC_ACQUIRE);
    if (producer < consumer) {
        /* The host's index went backwards: never send slots it has not written. */
        stat_tx_index_errors++;
        return 0;
    }
    unsigned n = producer - consumer > TW_BURST ? TW_BURST : (unsigned)(producer - consumer);
    if (n == 0)
        return 0;
    struct rte_mbuf *pkts[TW_BURST];
    if (rte_pktmbuf_alloc_bulk(s->pool, pkts, n) != 0)
        return 0;       /* no mbufs now: the frames wait in the ring */
    for (unsigned i = 0; i < n; i++) {
        uint8_t *slot = ring + TW_HEADER + (size_t)((consumer + i) & (slots - 1)) * slot_bytes;
        uint32_t length = *(uint32_t *)slot;
        char *data = rte_pktmbuf_append(pkts[i], length);
        if (data != NULL)
            memcpy(data, slot + TW_SLOT_HEADER, length);
    }
    __atomic_store_n(u64_at(ring, TW_CONSUMER), consumer + n, __ATOMIC_RELEASE);
    unsigned sent = 0;
    for (int attempt = 0; attempt < 1000 && sent < n; attempt++)
        sent += rte_eth_tx_burst(s->port, 0, pkts + sent, n - sent);
    if (sent < n) {
        rte_pktmbuf_free_bulk(pkts + sent, n - sent);
        __atomic_fetch_add(u64_at(ring, TW_DROPPED), n - sent, __ATOMIC_RELAXED);
        stat_tx_failed += n - sent;
    }
    stat_tx += sent;
    return n;
}

static int poll_loop(void *arg)
{
    struct tw_loop *s = arg;
    unsigned empty = 0;
    while (!__atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE)) {
        unsigned work = poll_rx(s) + poll_tx(s);
        stat_polls++;
        if (work) {
            empty = 0;
        } else if (s->idle_us && ++empty >= 1024) {
            /* Nothing for a while: give the core back for idle_us (0: never, pure busy poll). */
            usleep(s->idle_us);
            stat_idle_sleeps++;
        } else {
            rte_pause();
        }
    }
    return 0;
}

static void *poll_thread_main(void *arg)
{
    poll_loop(arg);
    return NULL;
}

/* Starts the poll loop on worker lcore ``lcore`` (or a thread of its own when ``lcore`` < 0). */
int tw_start(uint16_t port, void *rx_ring, void *tx_ring, int lcore, unsigned idle_us)
{
    if (running) {
        set_error("the poll loop is already running");
        return -EBUSY;
    }
    loop_state.port = port;
    loop_state.rx = rx_ring;
    loop_state.tx = tx_ring;
    loop_state.idle_us = idle_us;
    stop_flag = 0;
    int ret;
    if (lcore >= 0) {
        ret = rte_eal_remote_launch(poll_loop, &loop_state, (unsigned)lcore);
        if (ret != 0) {
            set_error("rte_eal_remote_launch on lcore %d failed: %s", lcore, rte_strerror(-ret));
            return ret;
        }
    } else if ((ret = pthread_create(&poll_thread, NULL, poll_thread_main, &loop_state)) != 0) {
        set_error("pthread_create failed: %s", strerror(ret));
        return -ret;
    }
    poll_lcore = lcore;
    running = 1;
    return 0;
}

/* Stops the poll loop and the port. */
void tw_stop(uint16_t port)
{
    if (running) {
        __atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
        if (poll_lcore >= 0)
            rte_eal_wait_lcore((unsigned)poll_lcore);
        else
            pthread_join(poll_thread, NULL);
        running = 0;
    }
    rte_eth_dev_stop(port);
}

/* rx, tx, tx_failed, polls, idle_sleeps, the port's ipackets, opackets, imissed, then
 * tx_index_errors. */
void tw_stats(uint16_t port, uint64_t *out)
{
    out[0] = stat_rx;
    out[1] = stat_tx;
    out[2] = stat_tx_failed;
    out[3] = stat_polls;
    out[4] = stat_idle_sleeps;
    struct rte_eth_stats stats;
    if (rte_eth_stats_get(port, &stats) == 0) {
        out[5] = stats.ipackets;
        out[6] = stats.opackets;
        out[7] = stats.imissed;
    }
    out[8] = stat_tx_index_errors;
}
