-- 0005: order history, returns and promotions (design doc section 2.3).

-- Order status tracking
CREATE TABLE order_status_history (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): history is of an order
    order_id UUID NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    from_status VARCHAR(50),
    to_status VARCHAR(50) NOT NULL,
    reason TEXT,
    notes TEXT,
    changed_by UUID REFERENCES users(id),
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now()
);

-- Refunds and returns
CREATE TABLE returns (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    -- NOT NULL (seed: nullable): a return is of an order
    order_id UUID NOT NULL REFERENCES orders(id),
    return_number VARCHAR(50) UNIQUE NOT NULL,
    status VARCHAR(50) NOT NULL DEFAULT 'requested',
    reason VARCHAR(255) NOT NULL,
    description TEXT,
    refund_amount DECIMAL(10,2),
    refund_method VARCHAR(50),
    items JSONB NOT NULL DEFAULT '[]',
    processed_by UUID REFERENCES users(id),
    processed_at TIMESTAMPTZ,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed
    CONSTRAINT non_negative_refund CHECK (refund_amount >= 0)
);

-- Discounts and promotions
CREATE TABLE promotions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    code VARCHAR(50) UNIQUE NOT NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    type VARCHAR(50) NOT NULL, -- 'percentage', 'fixed', 'bogo'
    value DECIMAL(10,2) NOT NULL,
    minimum_order_value DECIMAL(10,2),
    maximum_discount DECIMAL(10,2),
    usage_limit INTEGER,
    usage_count INTEGER DEFAULT 0,
    customer_usage_limit INTEGER DEFAULT 1,
    applicable_products JSONB DEFAULT '[]',
    applicable_categories JSONB DEFAULT '[]',
    applicable_vendors JSONB DEFAULT '[]',
    start_date TIMESTAMPTZ NOT NULL,
    end_date TIMESTAMPTZ NOT NULL,
    status VARCHAR(20) DEFAULT 'active',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    -- not in the seed: checks on value, limits and dates
    CONSTRAINT non_negative_value CHECK (value >= 0),
    CONSTRAINT percentage_at_most_100 CHECK (type <> 'percentage' OR value <= 100),
    CONSTRAINT non_negative_limits CHECK (minimum_order_value >= 0 AND maximum_discount >= 0),
    CONSTRAINT valid_period CHECK (end_date > start_date)
);

CREATE TABLE order_promotions (
    tenant_id UUID NOT NULL DEFAULT current_tenant_id(),
    order_id UUID REFERENCES orders(id) ON DELETE CASCADE,
    promotion_id UUID REFERENCES promotions(id),
    discount_amount DECIMAL(10,2) NOT NULL,
    applied_at TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (order_id, promotion_id),
    -- not in the seed
    CONSTRAINT non_negative_discount CHECK (discount_amount >= 0)
);

-- Not in the seed: indexes on foreign-key columns no other index leads with.
CREATE INDEX idx_order_status_history_order ON order_status_history(order_id, created_at);
CREATE INDEX idx_order_status_history_changed_by ON order_status_history(changed_by);
CREATE INDEX idx_returns_order ON returns(order_id);
CREATE INDEX idx_returns_processed_by ON returns(processed_by);
CREATE INDEX idx_order_promotions_promotion ON order_promotions(promotion_id);
