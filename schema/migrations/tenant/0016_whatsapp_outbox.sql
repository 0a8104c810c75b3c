-- 0016: notifications become the WhatsApp outbox (dispatch/messaging/).
--
-- A notification row is one message to one person about one event. The notifier (a Kafka
-- consumer of order-events and delivery-events) inserts it 'pending'; the sender claims due
-- rows, posts them to the WhatsApp Cloud API and records the outcome. Columns added here:
--
-- dedupe_key      '<event id>/<template>/<recipient type>/<recipient id>': UNIQUE, so an event
--                 the broker delivers again inserts nothing (ON CONFLICT DO NOTHING) and its
--                 message is never planned, hence never sent, twice.
-- template, language, kind
--                 the approved template, its language code, and transactional | marketing
--                 (marketing needs the person's consent at send time).
-- recipient_type, recipient_id
--                 who it is for ('customer' -> customers.id, 'vendor' -> vendors.id): the
--                 consent subject. The phone number is not copied here: it is read from
--                 users (user_id) when the message goes, so an erased or corrected number is
--                 never sent to, and no second copy of it needs erasing.
-- event_id, order_id
--                 the outbox event that caused it and its order (support, tests, the link).
-- attempts, next_attempt_at, last_error
--                 the retry schedule: attempts counts posts started; a 'pending' row is due at
--                 next_attempt_at; a 'sending' row's next_attempt_at is the end of its lease
--                 (a sender that died mid-send leaves it to be claimed again then).
--
-- status: pending -> sending -> sent | failed | suppressed (| pending again for a retry).
-- 'delivered' and 'read' are allowed for a status webhook that mirrors Meta's receipts here.
ALTER TABLE notifications
    ADD COLUMN dedupe_key VARCHAR(200) UNIQUE,
    ADD COLUMN template VARCHAR(100),
    ADD COLUMN language VARCHAR(15),
    ADD COLUMN kind VARCHAR(20) CHECK (kind IN ('transactional', 'marketing')),
    ADD COLUMN recipient_type VARCHAR(20) CHECK (recipient_type IN ('customer', 'vendor')),
    ADD COLUMN recipient_id UUID,
    ADD COLUMN event_id UUID,
    ADD COLUMN order_id UUID,
    ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN last_error TEXT,
    ADD CONSTRAINT valid_notification_status
        CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'suppressed'));

-- What the sender claims: due rows only, oldest due first (a partial index stays small: rows
-- leave it once sent, failed or suppressed).
CREATE INDEX idx_notifications_due ON notifications (next_attempt_at)
    WHERE status IN ('pending', 'sending');
-- A message of an order (support reads an order's messages; the tests count them).
CREATE INDEX idx_notifications_order ON notifications (order_id) WHERE order_id IS NOT NULL;

-- The outbound message that a notification became. No foreign key: notifications are kept
-- 180 days and messages 365 (retention), so a notification may go first.
ALTER TABLE whatsapp_messages ADD COLUMN notification_id UUID;
CREATE INDEX idx_whatsapp_messages_notification ON whatsapp_messages (notification_id)
    WHERE notification_id IS NOT NULL;
