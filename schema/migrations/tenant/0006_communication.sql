-- 0006: WhatsApp messages, conversations and notifications (design doc section 2.4).

-- WhatsApp messaging
CREATE TABLE whatsapp_messages (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    message_id VARCHAR(255) UNIQUE NOT NULL,
    conversation_id VARCHAR(255) NOT NULL,
    from_number VARCHAR(20) NOT NULL,
    to_number VARCHAR(20) NOT NULL,
    direction VARCHAR(20) NOT NULL, -- 'inbound', 'outbound'
    type VARCHAR(50) NOT NULL, -- 'text', 'image', 'document', 'location', 'interactive'
    content JSONB NOT NULL,
    status VARCHAR(50) DEFAULT 'sent',
    status_timestamp TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: a message goes one of two ways
    CONSTRAINT valid_direction CHECK (direction IN ('inbound', 'outbound'))
);

CREATE TABLE conversations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    conversation_id VARCHAR(255) UNIQUE NOT NULL,
    user_id UUID REFERENCES users(id),
    state VARCHAR(50) NOT NULL DEFAULT 'active',
    context JSONB DEFAULT '{}',
    last_message_at TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now()
);

-- Notifications
CREATE TABLE notifications (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    user_id UUID REFERENCES users(id),
    type VARCHAR(50) NOT NULL,
    channel VARCHAR(50) NOT NULL, -- 'whatsapp', 'sms', 'email', 'push'
    title VARCHAR(255),
    content TEXT NOT NULL,
    data JSONB DEFAULT '{}',
    status VARCHAR(20) DEFAULT 'pending',
    sent_at TIMESTAMPTZ,
    read_at TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now()
);

-- Not in the seed: a conversation's messages are read in order; the seed had no index for it.
CREATE INDEX idx_whatsapp_messages_conversation ON whatsapp_messages(conversation_id, created_at);
-- Not in the seed: indexes on foreign-key columns no other index leads with.
CREATE INDEX idx_conversations_user ON conversations(user_id);
CREATE INDEX idx_notifications_user ON notifications(user_id, created_at DESC);
